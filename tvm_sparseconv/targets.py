"""Compilation targets: the one place that turns "this machine" or a user's choice into a TVM Target.

Also names the GPU a tuning log belongs to (`tuning_logs/<gpu_folder>/`), and defines the families
of devices whose tuning records travel between models: CPUs of one ISA (`isa_family`), GPUs of one
CUDA architecture (`cuda_family`), and how a travelled record's time is weighed (`family_time_factor`).
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import tvm
from tvm.target import Target, codegen

TargetLike = Any  # None, "cpu", "llvm", "cuda", a tag such as "nvidia/nvidia-h100", a dict, a Target


@functools.lru_cache(maxsize=None)
def host_cpu_target() -> Target:
    """LLVM for this CPU: its own instruction set, and as many cores as TVM's thread pool uses."""
    return cpu_target(codegen.llvm_get_system_cpu())


def cpu_target(mcpu: str) -> Target:
    """LLVM for CPU model `mcpu` with this machine's core count (tuning another model's record
    on a machine that runs its code, e.g. an AVX2 CPU's on an AVX-512 one)."""
    if not codegen.llvm_is_valid_cpu(mcpu, str(codegen.llvm_get_system_triple())):
        raise ValueError(f"LLVM does not know the CPU {mcpu!r} for {codegen.llvm_get_system_triple()}")
    cores = int(os.environ.get("TVM_NUM_THREADS", 0)) or _physical_cores()
    return Target({"kind": "llvm", "mcpu": mcpu, "num-cores": cores})


def configure_cpu_threads() -> None:
    """TVM's CPU thread pool: every physical core, and idle workers that sleep rather than spin.

    - Cores: TVM's default is half the logical CPUs on x86 (to skip hyper-threads); on a machine
      without them, such as a 2-vCPU cloud VM, every CPU kernel then ran on one core of two (the
      headline's 4x8x2 row tile: 341.7 ms on one thread, 129.4 ms on two,
      `benchmarks/experiments/cpu_loop_orders-cpu-znver3{-1thread,}.json`).
    - Spinning: after a parallel region TVM's workers spin for the next one. Inside a TensorFlow
      model that steals cores from TensorFlow's own ops: the dense pruned ResNet-50 took 148-153 ms
      timed in turns with the sparsified one, 93-103 ms with spinning off, and the sparsified one
      106-115 against 93-96 ms (`benchmarks/experiments/tvm_spin_in_tf-cpu-znver3-2threads.json`).

    The pool reads both when it is first created, so this must run before any TVM CPU kernel
    does; child processes (MetaSchedule's runners) inherit them. Values the user set win
    (`TVM_NUM_THREADS` or `OMP_NUM_THREADS`; `TVM_THREAD_POOL_SPIN_COUNT`).
    """
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(_physical_cores())
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil is a dependency
        return os.cpu_count() or 1


def gpu_available() -> bool:
    """True when TVM was built with CUDA and sees a device."""
    return bool(tvm.runtime.enabled("cuda")) and tvm.cuda(0).exist


@functools.lru_cache(maxsize=None)
def cuda_target(device_id: int = 0) -> Target:
    """A CUDA target describing the visible GPU `device_id` (arch and limits read off the device)."""
    dev = tvm.cuda(device_id)
    if not dev.exist:
        raise RuntimeError(f"no CUDA device {device_id} visible to TVM")
    return cuda_target_from_device(dev, host_cpu_target())


def cuda_target_from_device(dev: tvm.runtime.Device, host: Target) -> Target:
    """A CUDA target read off `dev`, a local device or one of an RPC session."""
    major, minor = (int(v) for v in dev.compute_version.split("."))
    cfg = {
        "kind": "cuda",
        "arch": f"sm_{major}{minor}",
        "max_shared_memory_per_block": dev.max_shared_memory_per_block,
        "max_threads_per_block": dev.max_threads_per_block,
        "thread_warp_size": dev.warp_size,
        "registers_per_block": 65536,
    }
    return Target(cfg, host=host)


def cuda_target_for_arch(arch: str = "sm_90") -> Target:
    """A CUDA target for an architecture without a GPU present (code generation, CI checks)."""
    cfg = {
        "kind": "cuda",
        "arch": arch,
        "max_shared_memory_per_block": 49152,
        "max_threads_per_block": 1024,
        "thread_warp_size": 32,
        "registers_per_block": 65536,
    }
    return Target(cfg, host=Target({"kind": "llvm"}))


def resolve_target(target: TargetLike = None) -> Target:
    """`None`: CUDA if TVM sees a GPU, else this CPU. Strings "cpu"/"llvm"/"cuda", tags, dicts, Targets."""
    if isinstance(target, Target):
        return target
    if target is None:
        return cuda_target() if gpu_available() else host_cpu_target()
    if isinstance(target, str):
        name = target.strip().lower()
        if name in ("cpu", "llvm"):
            return host_cpu_target()
        if name in ("cuda", "gpu"):
            return cuda_target()
        try:
            return Target(target)
        except Exception as e:  # noqa: BLE001 - TVM's error text explains the problem
            raise ValueError(
                f"unknown target {target!r}: expected 'cpu', 'cuda', a TVM tag or a target dict ({e})"
            ) from e
    if isinstance(target, dict):
        return Target(target)
    raise TypeError(f"target must be None, a string, a dict or a tvm Target, got {type(target).__name__}")


def device_for(target: Target, device_id: int = 0) -> tvm.runtime.Device:
    """The runtime device a target's code runs on."""
    kind = target.kind.name
    if kind == "llvm":
        return tvm.cpu(0)
    if kind == "cuda":
        return tvm.cuda(device_id)
    raise ValueError(f"unsupported target kind {kind!r}: expected 'llvm' or 'cuda'")


def gpu_folder_name(device_name: str) -> str:
    """Folder of a GPU's tuning logs: "NVIDIA H100 80GB HBM3" -> "nvidia-h100"."""
    words = device_name.lower().replace("nvidia", " ").split()
    model = next((w for w in words if re.fullmatch(r"[a-z]+\d+[a-z]*", w)), None)
    if model is None:
        model = "-".join(re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-").split("-")[:3])
        return model
    return f"nvidia-{model}"


def target_folder_name(target: Target, device_id: int = 0) -> str:
    """Folder for `target`'s tuning logs: the GPU's name for CUDA, `cpu-<mcpu>` for LLVM."""
    if target.kind.name == "cuda":
        dev = tvm.cuda(device_id)
        # `exist` goes through the CUDA runtime, which initialises the driver: `device_name` alone asks
        # the driver, and in a fresh process given a full CUDA target (nothing touched the GPU yet)
        # failed with CUDA_ERROR_NOT_INITIALIZED
        if not dev.exist:
            raise RuntimeError(f"no CUDA device {device_id}: the target {target} needs one to find its tuning logs")
        return gpu_folder_name(dev.device_name)
    mcpu = str(target.attrs.get("mcpu", "generic"))
    return f"cpu-{mcpu}"


# --- ISA families: which CPUs may use each other's tuning records --------------------------------
#: (family, LLVM features every CPU of it has), widest first. A CPU of no family is "generic":
#: its records are used on its own model only.
ISA_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("x86-avx512", ("avx512f",)),
    ("x86-avx2", ("avx2", "fma")),
)
GENERIC_FAMILY = "generic"
_AMD_CPUS = ("znver", "bdver", "btver", "barcelona", "amdfam", "athlon", "opteron", "k8")


@functools.lru_cache(maxsize=None)
def isa_family(mcpu: str | None) -> str:
    """The ISA family of LLVM CPU `mcpu` ("x86-avx512", "x86-avx2"), else "generic".

    Read off LLVM's feature table for the CPU, so a CPU model LLVM knows needs no list here. A CPU
    this LLVM does not know for this machine's triple (another architecture) is "generic".
    """
    if not mcpu or mcpu == "generic":
        return GENERIC_FAMILY
    if not codegen.llvm_is_valid_cpu(mcpu, str(codegen.llvm_get_system_triple())):
        return GENERIC_FAMILY  # also keeps LLVM from logging an "invalid -mcpu" error per query
    probe = Target({"kind": "llvm", "mcpu": mcpu})
    for family, features in ISA_FAMILIES:
        if codegen.llvm_cpu_has_features(list(features), probe):
            return family
    return GENERIC_FAMILY


def cuda_family(arch: str | None) -> str:
    """The record family of a CUDA architecture: "sm_90" and "sm_90a" -> "cuda-sm_90" (the "a"
    variant only adds instructions to sm_90: every sm_90 GPU runs both); none -> "generic"."""
    if not arch:
        return GENERIC_FAMILY
    return f"cuda-{re.sub(r'a$', '', str(arch))}"


def target_isa_family(target: Target) -> str:
    """The record family of a target: `isa_family` of an LLVM target's `-mcpu`, `cuda_family` of a
    CUDA target's arch; "generic" (records used on their own device only) otherwise."""
    kind = target.kind.name
    if kind == "cuda":
        return cuda_family(str(target.attrs["arch"]) if "arch" in target.attrs else None)
    if kind != "llvm" or "mcpu" not in target.attrs:
        return GENERIC_FAMILY
    return isa_family(str(target.attrs["mcpu"]))


#: How much slower than recorded a record of another GPU of the architecture is assumed to run here,
#: when it is weighed against this GPU's own records: GPUs of one architecture share the SM design
#: (the H100 SXM and the H200 are the same GH100 chip, 132 SMs at the same clocks; the H200's memory
#: is 1.43x faster), so a same-arch record that is faster even 1.5x slower displaces an own one.
GPU_FAMILY_TIME_FACTOR = 1.5


def family_time_factor(family: str | None) -> float | None:
    """The factor a travelled record's time is multiplied by before it is compared with this
    device's own records; None where it never is (CPU models of one ISA family differ in cores,
    caches and clocks: their records only fill in where this CPU has none of its own)."""
    if family is not None and family.startswith("cuda-"):
        return GPU_FAMILY_TIME_FACTOR
    return None


def weighed_us(run_us: float | None, family: str | None) -> tuple[bool, float]:
    """How a record ranks (`family`: None for this device's own): (never weighed against this
    device's own records, its time as weighed). Own records and GPU records of the architecture
    (their time `family_time_factor` slower) compete by time; a record of another CPU of the ISA
    family ranks after every own one; a record without a time ranks last."""
    factor = family_time_factor(family) if family is not None else 1.0
    return (factor is None, (run_us if run_us is not None else float("inf")) * (factor or 1.0))


def device_name(target: Target) -> str:
    """What tuning logs call the device of `target`: the GPU's name, or "CPU <mcpu> x<cores>"."""
    if target.kind.name == "cuda":
        return tvm.cuda(0).device_name
    return f"CPU {target.attrs.get('mcpu', '')} x{target.attrs.get('num-cores', '')}"


def cpu_vendor(mcpu: str) -> str:
    """"amd" or "intel" for an x86 LLVM CPU name (only orders candidate records: same vendor first)."""
    return "amd" if mcpu.startswith(_AMD_CPUS) else "intel"
