"""Fault injection: damaged caches and tuning logs, concurrent compiles, empty shapes.

Every scenario runs in its own Python process (a damaged shared library can kill a process with
SIGBUS inside `dlopen`, which no `except` catches), and must end either in a correct result
(fresh random input, against a float64 reference) or in a clear error; never in a signal, and
never in a raw TVM error. Layers are small and compiled for this CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tvm_sparseconv import module_cache, targets, tuning_records

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5

# Run in every scenario process before its own code: layers (fixed kernels, so that records and
# cache files match across processes) and helpers that print what happened as one JSON line.
PRELUDE = '''
import json, os, sys, warnings
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tvm_sparseconv as tsc
from tvm_sparseconv import reference, targets

LAYERS = {  # name: seed, input shape, kernel shape, density, strides, padding
    "A": (1, (1, 10, 11, 3), (3, 3, 3, 4), 0.3, 1, "SAME"),
    "B": (2, (1, 9, 8, 4), (3, 3, 4, 5), 0.4, 2, "VALID"),
    "C": (3, (2, 7, 7, 3), (1, 1, 3, 6), 0.5, 1, "SAME"),
}

def layer(name):
    seed, shape, kshape, density, strides, padding = LAYERS[name]
    r = np.random.default_rng(seed)
    w = (r.uniform(0.1, 1, kshape) * r.choice([-1, 1], kshape) * (r.random(kshape) < density)).astype(np.float32)
    return tsc.SparseKernel.from_dense(w), w, shape, dict(strides=strides, padding=padding)

def run(name):
    """Compile layer `name` for this CPU, run it on a fresh input, report the result."""
    kernel, w, shape, kw = layer(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op = tsc.compile(kernel, shape, target="cpu", **kw)
    x = np.random.default_rng().standard_normal(shape).astype(np.float32)
    err = reference.relative_error(np.asarray(op(x)), reference.conv2d_f64(x, w, op.layer_workload))
    b = op._build
    return {"layer": name, "source": op.schedule_source, "from_disk": b.from_disk_cache,
            "cache_path": str(b.cache_path), "rel_err": err,
            "warnings": [[c.category.__name__, str(c.message)] for c in caught
                         if c.category.__name__ not in ("UntunedWarning", "InputCopyWarning", "DeprecationWarning")]}

def write_record(name, folder):
    """Append a record of layer `name` (its untuned template's trace, 100 us) as scripts/tune.py does."""
    from pathlib import Path
    from tvm.s_tir import meta_schedule as ms
    from tvm_sparseconv import tuning, tuning_records
    from tvm_sparseconv.schedules import default_rule
    from tvm_sparseconv.workloads import Problem
    kernel, w, shape, kw = layer(name)
    target = targets.host_cpu_target()
    # as compile() computes it on this target (a strided layer: its stride phases), as tune.py does
    problem = Problem.from_kernel(kernel, shape, kw["strides"], kw["padding"], name=name).for_target(target.kind.name)
    wl = problem.workload()
    mod = tuning_records.workload_module(wl)
    sch = default_rule(target, wl.algorithm).apply(mod["main"], target, False)
    rec = ms.database.TuningRecord(sch.trace, ms.database.Workload(mod), [1e-4], target,
                                   ms.arg_info.ArgInfo.from_prim_func(mod["main"]))
    tuning._keep_record(Path(folder), rec, mod, wl, problem, target, 1e-4, 0.0, "fault-injection")

def report(obj):
    print("RESULT " + json.dumps(obj))
'''


def run_scenario(code: str, cache: Path, logs: Path | None = None, timeout: int = 300) -> object:
    """Run PRELUDE + `code` in a new process; it must exit normally (no signal, status 0)."""
    env = dict(os.environ, TVM_SPARSECONV_CACHE=str(cache), PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    if logs is not None:
        env["TVM_SPARSECONV_TUNING_LOGS"] = str(logs)
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    tail = proc.stderr[-3000:]
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}:\n{tail}"
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{tail}"
    assert "InternalError" not in proc.stderr and "tvm.error" not in proc.stderr, tail
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no result printed:\n{proc.stdout[-2000:]}\n{tail}"
    return json.loads(lines[-1][len("RESULT "):])


def warned(result: dict, category: str, *fragments: str) -> list[str]:
    return [m for c, m in result["warnings"] if c == category and all(f in m for f in fragments)]


# --- the compiled-module cache ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine_cache(tmp_path_factory) -> tuple[Path, Path]:
    """A cache holding layer A's module, built by a separate process; (cache folder, artifact)."""
    cache = tmp_path_factory.mktemp("pristine_cache")
    res = run_scenario("report(run('A'))", cache, tmp_path_factory.mktemp("no_logs"))
    assert res["from_disk"] is False and res["rel_err"] <= TOL
    artifact = Path(res["cache_path"])
    assert artifact.is_file() and module_cache.verify(artifact) is None
    return cache, artifact


def _truncate_to_a_third(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def _garbage_same_size(p: Path) -> None:
    p.write_bytes(os.urandom(p.stat().st_size))


def _flip_one_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


DAMAGE = {
    "truncated-to-a-third": (lambda p: _truncate_to_a_third(p), "size"),
    "zero-length": (lambda p: p.write_bytes(b""), "empty file"),
    "garbage-same-size": (lambda p: _garbage_same_size(p), "SHA-256"),
    "one-byte-flipped": (lambda p: _flip_one_byte(p), "SHA-256"),
    "sidecar-missing": (lambda p: module_cache.sidecar_path(p).unlink(), "no checksum file"),
    "sidecar-garbage": (lambda p: module_cache.sidecar_path(p).write_bytes(b"\x00garbage\n"), "checksum file"),
    "sidecar-wrong-digest": (lambda p: module_cache.sidecar_path(p).write_text(f"{'0' * 64} {p.stat().st_size}\n"),
                             "SHA-256"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_artifact_is_rebuilt_not_loaded(damage, pristine_cache, tmp_path):
    """A damaged artifact or sidecar is a cache miss with one CacheWarning naming the file; the
    module is rebuilt, the file replaced, and the next process loads it without a warning."""
    src, artifact = pristine_cache
    cache = tmp_path / "cache"
    shutil.copytree(src, cache)
    path = cache / artifact.relative_to(src)
    damage_fn, what = DAMAGE[damage]
    damage_fn(path)
    logs = tmp_path / "no_logs"
    logs.mkdir()

    res = run_scenario("report(run('A'))", cache, logs)
    assert res["rel_err"] <= TOL, res
    assert res["from_disk"] is False and res["cache_path"] == str(path)
    cache_warnings = [m for c, m in res["warnings"] if c == "CacheWarning"]
    assert len(cache_warnings) == 1 and str(path) in cache_warnings[0] and what in cache_warnings[0], res
    assert module_cache.verify(path) is None  # replaced by a good file

    again = run_scenario("report(run('A'))", cache, logs)
    assert again["from_disk"] is True and again["rel_err"] <= TOL and again["warnings"] == [], again


def test_concurrent_compiles_of_one_layer_share_one_build(tmp_path):
    """4 processes compiling the same new layer into one empty cache at once: all succeed, one builds."""
    cache, logs = tmp_path / "cache", tmp_path / "no_logs"
    logs.mkdir()
    start = time.time() + 12  # every process waits for this moment after its imports
    code = f"""
        import time
        kernel, w, shape, kw = layer('B')
        time.sleep(max(0.0, {start} - time.time()))
        report(run('B'))
    """
    env = dict(os.environ, TVM_SPARSECONV_CACHE=str(cache), TVM_SPARSECONV_TUNING_LOGS=str(logs),
               PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode >= 0, f"killed by signal {-p.returncode}:\n{err[-3000:]}"
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:]))
    assert all(r["rel_err"] <= TOL and r["warnings"] == [] for r in results), results
    assert sum(not r["from_disk"] for r in results) == 1, results  # the others waited, then loaded it
    artifacts = list(cache.rglob("*.so"))
    assert len(artifacts) == 1 and module_cache.verify(artifacts[0]) is None
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")], "temporary files left behind"


# --- tuning logs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_logs(tmp_path_factory) -> tuple[Path, Path]:
    """A log root with records of layers A and B for this CPU (written as tune.py writes them), and
    a cache shared by the log scenarios; checked to be used."""
    root = tmp_path_factory.mktemp("logs")
    cache = tmp_path_factory.mktemp("logs_cache")
    folder = root / targets.target_folder_name(targets.host_cpu_target())
    run_scenario(f"write_record('A', {str(folder)!r}); write_record('B', {str(folder)!r}); report(0)", cache)
    res = run_scenario("report([run('A'), run('B')])", cache, root)
    for r in res:
        assert r["source"].startswith("tuned:") and r["rel_err"] <= TOL and r["warnings"] == [], res
    return root, cache


def _copy_logs(good_logs, tmp_path) -> tuple[Path, Path, Path]:
    src, cache = good_logs
    root = tmp_path / "logs"
    shutil.copytree(src, root)
    folder = root / targets.target_folder_name(targets.host_cpu_target())
    return root, folder, cache


def _set_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _record_line(folder: Path, number: int) -> list:
    return json.loads((folder / tuning_records.RECORD_FILE).read_text().splitlines()[number - 1])


W, R = tuning_records.WORKLOAD_FILE, tuning_records.RECORD_FILE
LOG_DAMAGE = {
    # name: (damage(folder), file and line the warning must name)
    "workload-line-not-json": (lambda f: _set_line(f / W, 1, "not json {"), (W, 1)),
    "workload-line-not-a-workload": (lambda f: _set_line(f / W, 1, '["123", "bm90IGEgbW9kdWxl"]'), (W, 1)),
    "record-line-not-json": (lambda f: _set_line(f / R, 1, "[0, [[[[\"GetSBlock\""), (R, 1)),
    "record-line-bad-trace": (lambda f: _set_line(f / R, 1, '[0, [[1, 2], [0.0001], {"kind": "llvm"}, []]]'), (R, 1)),
    "record-line-dangling-index": (lambda f: _set_line(f / R, 1, json.dumps([7, _record_line(f, 1)[1]])), (R, 1)),
    "merge-conflict": (lambda f: (_set_line(f / W, 1, "<<<<<<< HEAD"), _set_line(f / R, 1, ">>>>>>> theirs")),
                       (W, 1)),
}


@pytest.mark.parametrize("damage", list(LOG_DAMAGE))
def test_damaged_tuning_log_line_is_skipped(damage, good_logs, tmp_path):
    """Layer A's line is damaged: A falls back to the untuned template with a warning naming the
    file and line, B's record (renumbered past the damage where needed) is still used."""
    root, folder, cache = _copy_logs(good_logs, tmp_path)
    damage_fn, (name, line) = LOG_DAMAGE[damage]
    damage_fn(folder)
    # A garbage line appended to the record file too, as in the issue.
    with open(folder / R, "a") as f:
        f.write("garbage, not a record\n")
    a, b = run_scenario("report([run('A'), run('B')])", cache, root)
    assert a["rel_err"] <= TOL and b["rel_err"] <= TOL, (a, b)
    assert a["source"].startswith("untuned:"), a
    assert b["source"].startswith("tuned:"), b
    assert warned(a, "TuningLogWarning", f"{folder / name}:{line}"), a["warnings"]
    assert warned(a, "TuningLogWarning", f"{folder / R}:3"), a["warnings"]  # the appended line


def test_record_for_another_target_is_skipped(good_logs, tmp_path):
    """A faster record of layer B for a CUDA target in the CPU folder is skipped with a warning."""
    root, folder, cache = _copy_logs(good_logs, tmp_path)
    rec = _record_line(folder, 2)
    rec[1][1] = [1e-9]
    rec[1][2] = {"kind": "cuda", "arch": "sm_90", "keys": ["cuda", "gpu"], "tag": ""}
    with open(folder / R, "a") as f:
        f.write(json.dumps(rec) + "\n")
    a, b = run_scenario("report([run('A'), run('B')])", cache, root)
    assert a["source"].startswith("tuned:") and b["source"].startswith("tuned:"), (a, b)
    assert a["rel_err"] <= TOL and b["rel_err"] <= TOL
    assert warned(a, "TuningLogWarning", f"{folder / R}:3", "'cuda'"), a["warnings"]


def test_entry_for_another_tvm_version_is_skipped(good_logs, tmp_path):
    root, folder, cache = _copy_logs(good_logs, tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    for e in meta["entries"]:
        if e["problem"] == "A":
            e["tvm_version"] = "0.0.1"
    (folder / "meta.json").write_text(json.dumps(meta))
    a, b = run_scenario("report([run('A'), run('B')])", cache, root)
    assert a["source"].startswith("untuned:") and b["source"].startswith("tuned:"), (a, b)
    assert a["rel_err"] <= TOL and b["rel_err"] <= TOL
    assert warned(a, "TuningLogWarning", "TVM 0.0.1"), a["warnings"]


@pytest.mark.parametrize("case", ["other-tvm-version", "other-mcpu", "no-meta", "meta-not-json"])
def test_unusable_folder_falls_back_to_untuned(case, good_logs, tmp_path):
    """A folder whose meta.json is for another TVM or CPU, missing or damaged: untuned, one warning."""
    root, folder, cache = _copy_logs(good_logs, tmp_path)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    if case == "other-tvm-version":
        meta["tvm_version"] = "0.0.1"
        meta_path.write_text(json.dumps(meta))
    elif case == "other-mcpu":
        meta["target"]["mcpu"] = "not-this-cpu"
        meta_path.write_text(json.dumps(meta))
    elif case == "no-meta":
        meta_path.unlink()
    else:
        meta_path.write_text(meta_path.read_text()[:40])
    a, b = run_scenario("report([run('A'), run('B')])", cache, root)
    assert a["source"].startswith("untuned:") and b["source"].startswith("untuned:"), (a, b)
    assert a["rel_err"] <= TOL and b["rel_err"] <= TOL
    assert len(warned(a, "TuningLogWarning", str(folder))) == 1, a["warnings"]
    assert b["warnings"] == [], b  # once per folder and process


def test_tune_append_repairs_a_damaged_database_keeping_good_lines(good_logs, tmp_path):
    """Appending (tune.py's path) to a database with damaged lines: the originals are backed up,
    every good line is kept (renumbered), the new record is added, and all of them are used."""
    root, folder, cache = _copy_logs(good_logs, tmp_path)
    original = {n: (folder / n).read_text() for n in (W, R)}
    _set_line(folder / W, 1, "<<<<<<< HEAD")  # A's workload
    with open(folder / R, "a") as f:
        f.write("=======\n")
    damaged = {n: (folder / n).read_text() for n in (W, R)}
    run_scenario(f"write_record('C', {str(folder)!r}); report(0)", cache, root)

    for n in (W, R):
        backups = list(folder.glob(f"{n}.damaged-*"))
        assert len(backups) == 1 and backups[0].read_text() == damaged[n], n
        lines = (folder / n).read_text().splitlines()
        assert all(json.loads(ln) for ln in lines)  # every line parses now
    wl_lines = (folder / W).read_text().splitlines()
    assert wl_lines[0] == original[W].splitlines()[1]  # B's workload kept, now first
    recs = [json.loads(ln) for ln in (folder / R).read_text().splitlines()]
    assert [r[0] for r in recs] == [0, 1]  # B's record renumbered, C's appended
    assert json.loads(original[R].splitlines()[1])[1] == recs[0][1]  # B's record itself unchanged

    a, b, c = run_scenario("report([run('A'), run('B'), run('C')])", cache, root)
    assert a["source"].startswith("untuned:"), a  # its workload line was the damaged one
    assert b["source"].startswith("tuned:") and c["source"].startswith("tuned:"), (b, c)
    assert all(r["rel_err"] <= TOL for r in (a, b, c))
    assert not [w for w in a["warnings"] if "damaged tuning log line" in w[1]], a["warnings"]


def test_tune_append_refuses_a_damaged_meta_json(good_logs, tmp_path):
    """A damaged meta.json cannot be repaired without losing entries: the append refuses, clearly,
    and changes nothing."""
    root, folder, cache = _copy_logs(good_logs, tmp_path)
    (folder / "meta.json").write_text("{ not json")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".lock"}
    res = run_scenario(f"""
        from tvm_sparseconv.tuning_records import TuningLogError
        try:
            write_record('C', {str(folder)!r})
            report("written")
        except TuningLogError as e:
            report(str(e))
    """, cache, root)
    assert "meta.json is damaged" in res and str(folder) in res, res
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".lock"} == before


# --- empty shapes ---------------------------------------------------------------------------------
def test_empty_shapes_follow_tf_conv2d(tmp_path):
    """Batch 0, a zero-sized image, and a kernel that fits the padded input zero times give the
    output tf.nn.conv2d gives (shape and values), through compile, conv2d and the Keras layer; a
    shape tf.nn.conv2d refuses is refused with a clear message."""
    res = run_scenario("""
        import tensorflow as tf
        from tvm_sparseconv.keras import SparseConv2D
        kernel, w, _, _ = layer('A')
        bias = np.random.default_rng().standard_normal(4).astype(np.float32)
        out = []
        for shape, strides, padding in [((0, 10, 11, 3), 1, "SAME"), ((0, 10, 11, 3), 2, "VALID"),
                                        ((1, 0, 11, 3), 1, "SAME"), ((2, 2, 11, 3), 1, "VALID"),
                                        ((1, 1, 9, 3), 2, "VALID"), ((1, 0, 5, 3), 1, [(2, 1), (1, 1)])]:
            x = tf.zeros(shape)
            tf_pad = padding if isinstance(padding, str) else [[0, 0], *padding, [0, 0]]
            # float64: TF's float32 oneDNN kernels on AVX-512 (znver5) give an empty input's shape back
            ref = tf.nn.relu(tf.nn.conv2d(tf.zeros(shape, tf.float64), w.astype(np.float64), strides, tf_pad)
                             + bias).numpy().astype(np.float32)
            y = tsc.conv2d(x, kernel, strides=strides, padding=padding, bias=bias, activation="relu", target="cpu")
            op = tsc.compile(kernel, shape, strides=strides, padding=padding, bias=bias, activation="relu",
                             target="cpu")
            y_np = op(np.zeros(shape, np.float32))
            row = [list(shape), list(ref.shape), list(y.shape), type(y).__name__, bool(np.array_equal(y.numpy(), ref)),
                   list(y_np.shape), bool(np.array_equal(y_np, ref)), type(op).__name__]
            if isinstance(padding, str):
                layer_ = SparseConv2D.from_sparse_kernel(kernel, bias, strides=(strides, strides), padding=padding.lower(),
                                                         activation="relu")
                y_k = layer_(x)
                row += [list(y_k.shape), bool(np.array_equal(np.asarray(y_k), ref))]
            out.append(row)
        try:
            tsc.conv2d(tf.zeros((1, 1, 9, 3)), kernel, padding="VALID", target="cpu")
            refused = None
        except ValueError as e:
            refused = str(e)
        report({"rows": out, "refused": refused})
    """, tmp_path / "cache", tmp_path)
    for row in res["rows"]:
        shape, ref_shape, y_shape, kind, same, np_shape, np_same, op_kind = row[:8]
        assert y_shape == ref_shape == np_shape and same and np_same and kind == "EagerTensor", row
        assert op_kind == "EmptySparseConv2D", row
        if len(row) > 8:
            assert row[8] == ref_shape and row[9], row
    assert res["rows"][-1][1] == [1, 1, 5, 4]  # an empty input with explicit padding: relu(bias) everywhere
    assert res["refused"] and "does not fit the padded input" in res["refused"], res
    assert not list((tmp_path / "cache").rglob("*.so")), "an empty shape compiled something"
