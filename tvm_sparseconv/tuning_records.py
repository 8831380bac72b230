"""Run-time lookup of MetaSchedule tuning records in `tuning_logs/<device>/`.

A folder holds MetaSchedule's JSON database (`database_workload.json`,
`database_tuning_record.json`) and `meta.json`, written by `scripts/tune.py`:

    {"tvm_version": "...", "device_name": "...", "target": {...},
     "entries": [{"workload": ConvWorkload json, "rule": "...", "run_us": ..., ...}, ...]}

MetaSchedule's database is not target-aware (apache/tvm#15549), so `meta.json` is what stops a
record from being applied on another device or another TVM version. A record tuned for the same
problem with a different ELL width (another kernel of the same layer and similar density) is
replayed too: the schedules never split the nonzero loop by a sampled factor, so the trace fits.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.tune_context import _normalize_mod
from tvm.target import Target

from .algorithms import prim_func
from .targets import target_folder_name
from .workload import ConvWorkload

META_FILE = "meta.json"
_LOCK = threading.Lock()


def logs_root() -> Path:
    """`$TVM_SPARSECONV_TUNING_LOGS`, else the repository's `tuning_logs/`."""
    env = os.environ.get("TVM_SPARSECONV_TUNING_LOGS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "tuning_logs"


def workload_module(wl: ConvWorkload) -> tvm.IRModule:
    """The IRModule MetaSchedule tunes and keys records on (one function, "main")."""
    return _normalize_mod(prim_func(wl))


@dataclass(frozen=True)
class TunedSchedule:
    schedule: s_tir.Schedule
    folder: Path
    rule: str
    tuned_workload: ConvWorkload
    run_us: float | None


def _family(wl: ConvWorkload) -> ConvWorkload:
    return replace(wl, ell_width=0)


def _open_database(folder: str) -> ms.database.JSONDatabase:
    """The folder's database, read again when its record file changed (tuning in this process)."""
    stamp = os.stat(os.path.join(folder, "database_tuning_record.json")).st_mtime_ns
    return _read_database(folder, stamp)


@functools.lru_cache(maxsize=16)
def _read_database(folder: str, _stamp: int) -> ms.database.JSONDatabase:
    return ms.database.JSONDatabase(
        path_workload=os.path.join(folder, "database_workload.json"),
        path_tuning_record=os.path.join(folder, "database_tuning_record.json"),
        allow_missing=False,
    )


def read_meta(folder: Path) -> dict | None:
    path = folder / META_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def meta_matches(meta: dict, target: Target) -> str | None:
    """None when the folder's records may be used for `target`; else why not."""
    if meta.get("tvm_version") != tvm.__version__:
        return f"tuned with TVM {meta.get('tvm_version')}, this is TVM {tvm.__version__}"
    rec_target = meta.get("target", {})
    if rec_target.get("kind") != target.kind.name:
        return f"tuned for target kind {rec_target.get('kind')!r}, not {target.kind.name!r}"
    for attr in ("arch", "mcpu"):
        want = str(target.attrs.get(attr, "")) if attr in target.attrs else ""
        have = str(rec_target.get(attr, ""))
        if want != have:
            return f"tuned for {attr}={have!r}, this target has {attr}={want!r}"
    return None


def _pick_entry(entries: list[dict], wl: ConvWorkload) -> dict | None:
    """The record of `wl` itself, else of the same problem with the nearest ELL width (wider first)."""
    fam = _family(wl)
    same = [e for e in entries if _family(ConvWorkload.from_json(e["workload"])) == fam]
    if not same:
        return None
    width = lambda e: e["workload"]["ell_width"]  # noqa: E731
    wider = [e for e in same if width(e) >= wl.ell_width]
    if wider:
        return min(wider, key=width)
    return max(same, key=width)


def find_tuned_schedule(wl: ConvWorkload, target: Target, folder: Path | None = None) -> TunedSchedule | None:
    """A schedule of `wl` replayed from the best matching record for `target`, or None."""
    folder = folder or logs_root() / target_folder_name(target)
    meta = read_meta(folder)
    if meta is None or meta_matches(meta, target) is not None:
        return None
    entry = _pick_entry(meta.get("entries", []), wl)
    if entry is None:
        return None
    tuned_wl = ConvWorkload.from_json(entry["workload"])
    with _LOCK:  # the database object is shared; queries are cheap
        db = _open_database(str(folder))
        record = db.query_tuning_record(workload_module(tuned_wl), target, "main")
    if record is None:
        return None
    sch = s_tir.Schedule(workload_module(wl))
    try:
        record.trace.apply_to_schedule(sch, remove_postproc=False)
    except Exception:  # noqa: BLE001 - a trace that does not fit this width: fall back
        return None
    return TunedSchedule(sch, folder, entry.get("rule", "?"), tuned_wl, entry.get("run_us"))
