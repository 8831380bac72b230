// TvmSparseConv2D: runs a compiled tvm_sparseconv module on TensorFlow tensors, in place.
//
// The module (the shared library `export_library` wrote) travels in the graph as the `module`
// attribute, so a SavedModel needs nothing else. Each distinct library is written once per process
// to a private temporary file, loaded through tvm-ffi's C API (`ffi.ModuleLoadFromFile`), unlinked,
// and kept for the process lifetime. Calls go through the C ABI only (TVMFFIFunctionCall with
// DLTensor* arguments over TensorFlow's buffers), so no C++ type crosses between TensorFlow's and
// TVM's builds.
//
// Arguments, as the compiled function takes them: x, weights... (the algorithm's packed arrays and
// the bias, graph constants), out. The module is compiled for `input_shape` = (B, H, W, C); an input
// of batch N (a multiple of B, N = 0 included) runs N / B calls on consecutive slices, which is how
// a graph traced with an unknown batch serves every batch with a batch-1 module.
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tvm/ffi/c_api.h"
#include "tvm/ffi/extra/c_env_api.h"

#ifdef TSC_TF_OP_GPU
#include "xla/stream_executor/stream.h"
#include "xla/stream_executor/stream_executor.h"
#endif

namespace tvm_sparseconv_tf {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace errors = tensorflow::errors;

constexpr int64_t kAlignment = 64;  // TVM's kernels assume 64-byte aligned buffers

// The last error raised in tvm-ffi, as text (and cleared).
std::string TakeFFIError() {
  TVMFFIObjectHandle err = nullptr;
  TVMFFIErrorMoveFromRaised(&err);
  if (err == nullptr) return "unknown error";
  TVMFFIErrorCell* cell = TVMFFIErrorGetCellPtr(err);
  std::string text = std::string(cell->kind.data, cell->kind.size) + ": " +
                     std::string(cell->message.data, cell->message.size);
  TVMFFIObjectDecRef(err);
  return text;
}

// Calls global function `name` with `args`; on success the (owned) result is in `out`.
bool CallGlobal(const char* name, TVMFFIAny* args, int n, TVMFFIAny* out, std::string* error) {
  TVMFFIByteArray fname{name, std::strlen(name)};
  TVMFFIObjectHandle f = nullptr;
  if (TVMFFIFunctionGetGlobal(&fname, &f) != 0 || f == nullptr) {
    *error = std::string("tvm-ffi has no global function ") + name + " (is TVM's runtime loaded?)";
    return false;
  }
  out->type_index = kTVMFFINone;
  out->zero_padding = 0;
  out->v_int64 = 0;
  int rc = TVMFFIFunctionCall(f, args, n, out);
  TVMFFIObjectDecRef(f);
  if (rc != 0) {
    *error = TakeFFIError();
    return false;
  }
  return true;
}

// A loaded module and its function. Never freed: a distinct library is loaded once per process,
// and releasing it during interpreter or TensorFlow shutdown would race with tvm-ffi's own teardown.
struct LoadedModule {
  TVMFFIObjectHandle module = nullptr;
  TVMFFIObjectHandle function = nullptr;
};

std::mutex g_modules_mutex;
auto* g_modules = new std::unordered_map<std::string, std::shared_ptr<LoadedModule>>();

#ifdef TSC_TVM_RUNTIME_CUDA
// CUDA modules need TVM's CUDA runtime (its loader for the embedded kernels).
void LoadCudaRuntimeOnce() {
  static std::once_flag once;
  std::call_once(once, [] { dlopen(TSC_TVM_RUNTIME_CUDA, RTLD_NOW | RTLD_GLOBAL); });
}
#endif

Status LoadModule(const std::string& bytes, const std::string& function,
                  std::shared_ptr<LoadedModule>* out) {
  std::lock_guard<std::mutex> lock(g_modules_mutex);
  std::string key = function + '\0' + bytes;
  auto it = g_modules->find(key);
  if (it != g_modules->end()) {
    *out = it->second;
    return Status();
  }
  const char* tmpdir = getenv("TMPDIR");
  std::string path = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/tvm_sparseconv_module_XXXXXX.so";
  std::vector<char> name(path.begin(), path.end());
  name.push_back('\0');
  int fd = mkstemps(name.data(), 3);  // ".so": tvm-ffi picks the loader from the suffix
  if (fd < 0) return errors::Internal("cannot create a temporary file for the TVM module in ", path);
  size_t written = 0;
  while (written < bytes.size()) {
    ssize_t n = write(fd, bytes.data() + written, bytes.size() - written);
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  bool ok = written == bytes.size() && fsync(fd) == 0;
  close(fd);
  if (!ok) {
    unlink(name.data());
    return errors::Internal("cannot write the TVM module to ", name.data());
  }
  auto loaded = std::make_shared<LoadedModule>();
  std::string error;
  TVMFFIAny arg;
  arg.type_index = kTVMFFIRawStr;
  arg.zero_padding = 0;
  arg.v_c_str = name.data();
  TVMFFIAny mod;
  ok = CallGlobal("ffi.ModuleLoadFromFile", &arg, 1, &mod, &error);
  unlink(name.data());  // the mapping stays; nothing reads the file again
  if (!ok) return errors::Internal("loading the compiled tvm_sparseconv module failed: ", error);
  loaded->module = mod.v_obj;
  TVMFFIAny args[3];
  args[0] = mod;
  args[1].type_index = kTVMFFIRawStr;
  args[1].zero_padding = 0;
  args[1].v_c_str = function.c_str();
  args[2].type_index = kTVMFFIBool;
  args[2].zero_padding = 0;
  args[2].v_int64 = 1;
  TVMFFIAny fn;
  if (!CallGlobal("ffi.ModuleGetFunction", args, 3, &fn, &error)) {
    return errors::Internal("the compiled module has no function ", function, ": ", error);
  }
  if (fn.type_index != kTVMFFIFunction) {
    return errors::Internal("the compiled module has no function ", function);
  }
  loaded->function = fn.v_obj;
  (*g_modules)[key] = loaded;
  *out = loaded;
  return Status();
}

DLDataType DType(tensorflow::DataType t) {
  switch (t) {
    case tensorflow::DT_FLOAT: return DLDataType{kDLFloat, 32, 1};
    case tensorflow::DT_INT32: return DLDataType{kDLInt, 32, 1};
    case tensorflow::DT_INT64: return DLDataType{kDLInt, 64, 1};
    default: return DLDataType{kDLOpaqueHandle, 0, 0};
  }
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kAlignment == 0; }

struct View {  // a DLTensor over a TensorFlow buffer, with its shape kept alive
  std::vector<int64_t> shape;
  DLTensor t{};
  View(void* data, DLDataType dtype, DLDevice dev, std::vector<int64_t> dims) : shape(std::move(dims)) {
    t.data = data;
    t.device = dev;
    t.ndim = static_cast<int32_t>(shape.size());
    t.dtype = dtype;
    t.shape = shape.data();
    t.strides = nullptr;  // compact, row-major
    t.byte_offset = 0;
  }
};

std::vector<int64_t> Dims(const Tensor& t) {
  std::vector<int64_t> d;
  for (int i = 0; i < t.dims(); ++i) d.push_back(t.dim_size(i));
  return d;
}

class TvmSparseConv2DOp : public OpKernel {
 public:
  explicit TvmSparseConv2DOp(OpKernelConstruction* ctx, DLDeviceType device_type)
      : OpKernel(ctx), device_type_(device_type) {
    std::string bytes, function;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("module", &bytes));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("function", &function));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_shape", &input_shape_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("output_shape", &output_shape_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_strides", &input_strides_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_pads", &input_pads_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_phases", &input_phases_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("conv_input_shape", &conv_shape_));
    OP_REQUIRES(ctx, input_strides_.size() == 2 && input_strides_[0] >= 1 && input_strides_[1] >= 1,
                errors::InvalidArgument("input_strides must be two positive integers"));
    OP_REQUIRES(ctx, input_pads_.size() == 2 && input_pads_[0] >= 0 && input_pads_[1] >= 0,
                errors::InvalidArgument("input_pads must be two integers >= 0"));
    OP_REQUIRES(ctx, input_phases_.size() == 2 && input_phases_[0] >= 1 && input_phases_[1] >= 1 &&
                         input_phases_[0] <= input_strides_[0] && input_phases_[1] <= input_strides_[1],
                errors::InvalidArgument("input_phases must be two integers in [1, input_strides]"));
    // With input_strides the function takes the input's stride phases (a strided layer on CPUs:
    // `tvm_sparseconv.stride_phases`), gathered here into a scratch buffer:
    // P[b, i, j, (ph*npw + pw)*C + c] = x[b, sh*i + ph - pt, sw*j + pw - pl, c], 0 outside x.
    phased_ = input_strides_[0] > 1 || input_strides_[1] > 1;
    OP_REQUIRES(ctx, !phased_ || device_type_ == kDLCPU,
                errors::InvalidArgument("input_strides other than [1, 1] are for CPU modules"));
    if (conv_shape_.empty()) {  // graphs written before input_phases: every stride-th pixel
      conv_shape_ = {input_shape_[0], (input_shape_[1] + input_strides_[0] - 1) / input_strides_[0],
                     (input_shape_[2] + input_strides_[1] - 1) / input_strides_[1], input_shape_[3]};
    }
    OP_REQUIRES(ctx, conv_shape_.size() == 4 && conv_shape_[0] == input_shape_[0] && conv_shape_[1] >= 1 &&
                         conv_shape_[2] >= 1 &&
                         conv_shape_[3] == input_phases_[0] * input_phases_[1] * input_shape_[3] &&
                         (phased_ || conv_shape_ == input_shape_),
                errors::InvalidArgument("conv_input_shape must be [N, rows, columns, phases x C] of the input"));
#ifdef TSC_TVM_RUNTIME_CUDA
    if (device_type_ == kDLCUDA) LoadCudaRuntimeOnce();
#endif
    OP_REQUIRES_OK(ctx, LoadModule(bytes, function, &module_));
  }

  // Run inline on the executor's thread rather than handing off to the inter-op pool: the kernel
  // already spreads over every core with TVM's own thread pool, and the hand-off (waking a parked
  // thread, then the caller) costs more than a small layer's kernel.
  bool IsExpensive() override { return false; }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const int64_t batch = input_shape_[0];
    OP_REQUIRES(ctx, x.dims() == 4 && x.dim_size(1) == input_shape_[1] && x.dim_size(2) == input_shape_[2] &&
                         x.dim_size(3) == input_shape_[3],
                errors::InvalidArgument("TvmSparseConv2D: input shape ", x.shape().DebugString(),
                                        " does not match the compiled shape [N, ", input_shape_[1], ", ",
                                        input_shape_[2], ", ", input_shape_[3], "]"));
    const int64_t n = x.dim_size(0);
    OP_REQUIRES(ctx, n % batch == 0,
                errors::InvalidArgument("TvmSparseConv2D: batch ", n, " is not a multiple of the compiled batch ",
                                        batch, " (trace with an unknown batch to get a batch-1 module)"));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({n, output_shape_[1], output_shape_[2], output_shape_[3]}), &y));
    if (n == 0) return;

    int device_id = 0;
#ifdef TSC_TF_OP_GPU
    void* stream = nullptr;
    if (device_type_ == kDLCUDA) {
      auto* dc = ctx->op_device_context();
      OP_REQUIRES(ctx, dc != nullptr && dc->stream() != nullptr, errors::Internal("no GPU stream"));
      stream = dc->stream()->platform_specific_handle().stream;
      device_id = dc->stream()->parent()->device_ordinal();
    }
#endif
    const DLDevice dev{device_type_, device_id};

    // Weights: graph constants, aligned by TensorFlow's allocator; copied only if not.
    const int num_weights = ctx->num_inputs() - 1;
    std::vector<Tensor> copies;
    std::vector<View> weights;
    weights.reserve(num_weights);
    for (int i = 0; i < num_weights; ++i) {
      const Tensor& w = ctx->input(i + 1);
      void* data = const_cast<char*>(w.tensor_data().data());
      if (!Aligned(data)) {
        OP_REQUIRES(ctx, device_type_ == kDLCPU, errors::InvalidArgument("weight ", i, " is not 64-byte aligned"));
        Tensor tmp;
        OP_REQUIRES_OK(ctx, ctx->allocate_temp(w.dtype(), w.shape(), &tmp));
        std::memcpy(const_cast<char*>(tmp.tensor_data().data()), data, w.TotalBytes());
        copies.push_back(tmp);
        data = const_cast<char*>(tmp.tensor_data().data());
      }
      weights.emplace_back(data, DType(w.dtype()), dev, Dims(w));
    }

    const int64_t in_bytes = batch * input_shape_[1] * input_shape_[2] * input_shape_[3] * 4;
    const int64_t conv_bytes = batch * conv_shape_[1] * conv_shape_[2] * conv_shape_[3] * 4;
    const int64_t out_bytes = batch * output_shape_[1] * output_shape_[2] * output_shape_[3] * 4;
    char* x_base = const_cast<char*>(x.tensor_data().data());
    char* y_base = const_cast<char*>(y->tensor_data().data());
    // A slice that is not 64-byte aligned goes through an aligned scratch buffer (CPU only).
    Tensor x_scratch, y_scratch;  // (a default Tensor counts as initialized: track them here)
    bool have_x_scratch = false, have_y_scratch = false;
    auto ensure_scratch = [&](const char* what, int64_t bytes, Tensor* scratch, bool* have) -> Status {
      if (device_type_ != kDLCPU) return errors::InvalidArgument(what, " slice is not 64-byte aligned");
      if (!*have) {
        Status allocated = ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({bytes / 4}), scratch);
        if (!allocated.ok()) return allocated;
        *have = true;
      }
      return Status();
    };
    View xv(nullptr, DLDataType{kDLFloat, 32, 1}, dev, conv_shape_);
    View yv(nullptr, DLDataType{kDLFloat, 32, 1}, dev,
            std::vector<int64_t>(output_shape_.begin(), output_shape_.end()));

    std::vector<TVMFFIAny> args(num_weights + 2);
    for (auto& a : args) {
      a.type_index = kTVMFFIDLTensorPtr;
      a.zero_padding = 0;
    }
    args[0].v_ptr = &xv.t;
    for (int i = 0; i < num_weights; ++i) args[i + 1].v_ptr = &weights[i].t;
    args[num_weights + 1].v_ptr = &yv.t;

#ifdef TSC_TF_OP_GPU
    TVMFFIStreamHandle previous = nullptr;
    if (device_type_ == kDLCUDA) TVMFFIEnvSetStream(kDLCUDA, device_id, stream, &previous);
#endif
    Status status;
    for (int64_t i = 0; i < n / batch && status.ok(); ++i) {
      char* xs = x_base + i * in_bytes;
      char* ys = y_base + i * out_bytes;
      if (phased_) {  // the stride phases: one channel vector (or zeros) per pixel and phase
        status = ensure_scratch("input", conv_bytes, &x_scratch, &have_x_scratch);
        if (!status.ok()) break;
        char* dst = const_cast<char*>(x_scratch.tensor_data().data());
        const int64_t pixel = input_shape_[3] * 4, h = input_shape_[1], w = input_shape_[2];
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t i = 0; i < conv_shape_[1]; ++i)
            for (int64_t j = 0; j < conv_shape_[2]; ++j)
              for (int64_t ph = 0; ph < input_phases_[0]; ++ph)
                for (int64_t pw = 0; pw < input_phases_[1]; ++pw, dst += pixel) {
                  const int64_t r = i * input_strides_[0] + ph - input_pads_[0];
                  const int64_t q = j * input_strides_[1] + pw - input_pads_[1];
                  if (r < 0 || r >= h || q < 0 || q >= w)
                    std::memset(dst, 0, pixel);
                  else
                    std::memcpy(dst, xs + ((b * h + r) * w + q) * pixel, pixel);
                }
        xs = const_cast<char*>(x_scratch.tensor_data().data());
      } else if (!Aligned(xs)) {
        status = ensure_scratch("input", in_bytes, &x_scratch, &have_x_scratch);
        if (!status.ok()) break;
        std::memcpy(const_cast<char*>(x_scratch.tensor_data().data()), xs, in_bytes);
        xs = const_cast<char*>(x_scratch.tensor_data().data());
      }
      bool y_direct = Aligned(ys);
      if (!y_direct) {
        status = ensure_scratch("output", out_bytes, &y_scratch, &have_y_scratch);
        if (!status.ok()) break;
      }
      xv.t.data = xs;
      yv.t.data = y_direct ? ys : const_cast<char*>(y_scratch.tensor_data().data());
      TVMFFIAny result;
      result.type_index = kTVMFFINone;
      result.zero_padding = 0;
      result.v_int64 = 0;
      if (TVMFFIFunctionCall(module_->function, args.data(), static_cast<int32_t>(args.size()), &result) != 0) {
        status = errors::Internal("tvm_sparseconv kernel failed: ", TakeFFIError());
        break;
      }
      if (result.type_index >= kTVMFFIStaticObjectBegin) TVMFFIObjectDecRef(result.v_obj);
      if (!y_direct) std::memcpy(ys, yv.t.data, out_bytes);
    }
#ifdef TSC_TF_OP_GPU
    if (device_type_ == kDLCUDA) TVMFFIEnvSetStream(kDLCUDA, device_id, previous, nullptr);
#endif
    OP_REQUIRES_OK(ctx, status);
  }

 private:
  DLDeviceType device_type_;
  std::vector<int64_t> input_shape_, output_shape_, input_strides_, input_pads_, input_phases_, conv_shape_;
  bool phased_ = false;
  std::shared_ptr<LoadedModule> module_;
};

class CpuOp : public TvmSparseConv2DOp {
 public:
  explicit CpuOp(OpKernelConstruction* ctx) : TvmSparseConv2DOp(ctx, kDLCPU) {}
};

REGISTER_OP("TvmSparseConv2D")
    .Input("x: float")
    .Input("weights: Tweights")
    .Output("y: float")
    .Attr("Tweights: list({float, int32, int64})")
    .Attr("module: string")
    .Attr("function: string")
    .Attr("input_shape: list(int)")
    .Attr("output_shape: list(int)")
    .Attr("input_strides: list(int) = [1, 1]")
    .Attr("input_pads: list(int) = [0, 0]")
    .Attr("input_phases: list(int) = [1, 1]")
    .Attr("conv_input_shape: list(int) = []")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      std::vector<int64_t> out;
      TF_RETURN_IF_ERROR(c->GetAttr("output_shape", &out));
      if (out.size() != 4) return errors::InvalidArgument("output_shape must have 4 entries (NHWC)");
      tensorflow::shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      c->set_output(0, c->MakeShape({c->Dim(x, 0), out[1], out[2], out[3]}));
      return Status();
    })
    .Doc("A sparse conv2d compiled by tvm_sparseconv; the compiled shared library is the `module` attribute.");

REGISTER_KERNEL_BUILDER(Name("TvmSparseConv2D").Device(tensorflow::DEVICE_CPU), CpuOp);

#ifdef TSC_TF_OP_GPU
class GpuOp : public TvmSparseConv2DOp {
 public:
  explicit GpuOp(OpKernelConstruction* ctx) : TvmSparseConv2DOp(ctx, kDLCUDA) {}
};
REGISTER_KERNEL_BUILDER(Name("TvmSparseConv2D").Device(tensorflow::DEVICE_GPU), GpuOp);
#endif

}  // namespace tvm_sparseconv_tf
