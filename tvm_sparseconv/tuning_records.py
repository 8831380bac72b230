"""Run-time lookup of MetaSchedule tuning records in `tuning_logs/<device>/`.

A folder holds MetaSchedule's JSON database (`database_workload.json`,
`database_tuning_record.json`) and `meta.json`, written by `scripts/tune.py`:

    {"tvm_version": "...", "device_name": "...", "target": {...},
     "entries": [{"workload": ConvWorkload json, "rule": "...", "run_us": ..., ...}, ...]}

MetaSchedule's database is not target-aware (apache/tvm#15549), so `meta.json` is what stops a
record from being applied on another device or another TVM version. A record tuned for the same
problem with a different ELL width (another kernel of the same layer and similar density) is
replayed too: the schedules never split the nonzero loop by a sampled factor, so the trace fits.

Records travel within a family of devices (`targets.target_isa_family`): CPUs of one ISA family,
GPUs of one CUDA architecture. With no record in this device's own folder, the folders of other
devices of its family (same TVM version; CPUs of the same vendor first, then by name) are searched,
and a record found there is replayed onto this workload and compiled for this device. `build.py`
checks such a schedule against float64 on its first use here, and weighs it against this device's
own records as `targets.family_time_factor` says.

Damaged logs (a merge conflict, a hand edit, a truncated write) never reach TVM's JSON reader,
whose errors are raw and fail the whole folder: every line is parsed here first (as JSON, then by
MetaSchedule's own per-line parsers), a damaged line is skipped with a `TuningLogWarning` naming
file and line, and the records that still parse are used. A record for another target, an entry
for another TVM version and a folder without (or with a damaged) `meta.json` are skipped with a
warning too; whatever is skipped, `compile()` falls back to the untuned template. Writers
(`tuning._write_record`) call `repair_folder` first: damaged lines are dropped, the original is
kept as `<file>.damaged-<time>`, and every good line is kept.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import tvm
import tvm_ffi
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.tune_context import _normalize_mod
from tvm.target import Target

from . import module_cache
from ._warnings import warn_user
from .algorithms import CONV, EPILOGUE, prim_func
from .schedules import RULES
from .schedules.common import SparseConvBlocks, SparseConvRule, sblock_or_none, with_cache_writes_first
from .schedules.cpu import schedule_relayout, without_old_relayout
from .algorithms.ell_gather import X_GATHER
from .targets import (GENERIC_FAMILY, cpu_vendor, cuda_family, family_time_factor, isa_family, target_folder_name,
                      target_isa_family, weighed_us)
from .workload import ConvWorkload

META_FILE = "meta.json"
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
_LOCK = threading.Lock()
_WARNED: set[tuple[str, str]] = set()  # (folder, reason) already warned about in this process


class TuningLogWarning(UserWarning):
    """Part of a tuning log was damaged or does not belong in its folder, and was skipped."""


class TuningLogError(ValueError):
    """A tuning-log file cannot be used as it is (e.g. a damaged `meta.json` when writing)."""


def _warn_once(folder: Path, reason: str) -> None:
    key = (str(folder), reason)
    if key not in _WARNED:
        _WARNED.add(key)
        warn_user(reason, TuningLogWarning)


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
    family: str | None = None  # the family when the record is another device's (not yet checked here)
    layer_width: int = 0  # the ELL width of the layer it was replayed for (0: the record's own)

    @property
    def estimated_us(self) -> float | None:
        """The record's time for the layer it was replayed for: `run_us` scaled up by the ELL widths'
        ratio where that layer is wider than the one tuned (its k loop runs that much longer), never
        down (`scaled_up`, as `tile_records.estimated_seconds`). A union record of conv2 3x3 b1 pruned in blocks of
        8 channels (40 taps a chunk, 7.0 us) ran the elementwise layer (~4x the taps) in 14.2 us on the
        H100, where register-reuse takes 7.3: taken at 7.0, it was chosen (stop 57)."""
        return None if self.run_us is None else scaled_up(self.run_us, self.tuned_workload.ell_width, self.layer_width)

    @property
    def travelled(self) -> bool:
        """True when the record was tuned on another device of this device's family."""
        return self.family is not None


def scaled_up(value: float, measured_at: int | None, size: int) -> float:
    """A time `value` measured at `measured_at` (a record's nonzeros or ELL width) as it counts for a
    layer of `size`: scaled up by their ratio where the layer is larger, never down; as measured
    where `measured_at` is unknown (None or 0). Records are ranked by it (`TunedSchedule.estimated_us`,
    `tile_records.estimated_seconds`)."""
    return value * max(1.0, size / measured_at) if measured_at else value


def _family(wl: ConvWorkload) -> ConvWorkload:
    """`wl` without what a record's trace can be replayed across: the ELL width (a trace fits any)
    and the epilogue (bias, activation), which a record tuned without one gets inlined afterwards
    (`_replayed`); Keras layers nearly always have a bias, records of benchmark sets have none."""
    return replace(wl, ell_width=0, has_bias=False, activation=None)


def _has_epilogue(wl: ConvWorkload) -> bool:
    return wl.has_bias or wl.activation is not None


# --- reading the JSON database line by line ----------------------------------------------------------
@dataclass
class _Line:
    number: int  # 1-based line number in its file
    text: str
    parsed: object  # ms.database.Workload, or ms.database.TuningRecord
    workload_index: int = -1  # records: the index of their workload among the kept workload lines
    target: dict = field(default_factory=dict)  # records: the target they were tuned for


@dataclass
class ScannedDatabase:
    """The lines of a folder's database that parse, and what was wrong with the others."""

    workloads: list[_Line]
    records: list[_Line]
    problems: list[str]  # "<file>:<line>: <what>", one per skipped line
    normalised: set[str]  # files whose good lines are all kept but that need rewriting (blank lines,
    # no final newline), so that MetaSchedule can read and append to them


def _lines(path: Path) -> tuple[list[tuple[int, str]], bool]:
    """The non-blank lines of `path` with their numbers, and whether the file needs normalising."""
    raw = path.read_bytes().decode("utf-8", errors="replace")
    lines = raw.split("\n")
    needs = bool(raw) and not raw.endswith("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = [(i + 1, t) for i, t in enumerate(lines) if t.strip()]
    return out, needs or len(out) != len(lines)


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 160 else text[:157] + "..."


def scan_database(folder: Path) -> ScannedDatabase:
    """Parse `folder`'s database files line by line, skipping (and describing) damaged lines.

    Blank lines are not counted as lines of the database (MetaSchedule cannot read a file with
    one). A record's workload index is mapped onto the workload lines kept; a record whose
    workload line was skipped, or that does not replay onto its workload, is skipped too.
    """
    problems: list[str] = []
    normalised: set[str] = set()
    wl_path, rec_path = folder / WORKLOAD_FILE, folder / RECORD_FILE
    kept_index: dict[int, int] = {}  # position in the workload file -> index among kept lines
    skipped_wl: dict[int, int] = {}  # position -> line number, for damaged workload lines
    workloads: list[_Line] = []
    wl_lines, needs = _lines(wl_path) if wl_path.is_file() else ([], False)
    if needs:
        normalised.add(WORKLOAD_FILE)
    for pos, (number, text) in enumerate(wl_lines):
        where = f"{wl_path}:{number}"
        try:
            obj = json.loads(text)
        except ValueError as e:
            problems.append(f"{where}: not JSON ({_short(e)})")
            skipped_wl[pos] = number
            continue
        if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str)):
            problems.append(f"{where}: not a MetaSchedule workload ([hash, module])")
            skipped_wl[pos] = number
            continue
        try:
            parsed = ms.database.Workload.from_json(obj)
        except Exception as e:  # noqa: BLE001 - TVM's parser: anything it refuses is damage
            problems.append(f"{where}: MetaSchedule cannot read this workload ({_short(e)})")
            skipped_wl[pos] = number
            continue
        kept_index[pos] = len(workloads)
        workloads.append(_Line(number, text, parsed))

    records: list[_Line] = []
    rec_lines, needs = _lines(rec_path) if rec_path.is_file() else ([], False)
    if needs:
        normalised.add(RECORD_FILE)
    for number, text in rec_lines:
        where = f"{rec_path}:{number}"
        try:
            obj = json.loads(text)
        except ValueError as e:
            problems.append(f"{where}: not JSON ({_short(e)})")
            continue
        if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int)
                and isinstance(obj[1], list) and len(obj[1]) == 4):
            problems.append(f"{where}: not a MetaSchedule tuning record ([workload index, [trace, times, "
                            "target, arguments]])")
            continue
        pos = obj[0]
        if pos in skipped_wl:
            problems.append(f"{where}: its workload ({wl_path.name} line {skipped_wl[pos]}) was skipped")
            continue
        if pos not in kept_index:
            problems.append(f"{where}: refers to workload {pos}, which {wl_path.name} does not have")
            continue
        workload = workloads[kept_index[pos]]
        try:
            parsed = ms.database.TuningRecord.from_json(obj[1], workload.parsed)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{where}: MetaSchedule cannot replay this record on its workload ({_short(e)})")
            continue
        target = obj[1][2] if isinstance(obj[1][2], dict) else {}
        records.append(_Line(number, text, parsed, kept_index[pos], target))
    return ScannedDatabase(workloads, records, problems, normalised)


def _record_target_mismatch(rec_target: dict, folder_target: dict) -> str | None:
    """None when a record's target is the folder's (kind, and arch/mcpu where the folder has one)."""
    if rec_target.get("kind") != folder_target.get("kind"):
        return f"target kind {rec_target.get('kind')!r}, this folder is for {folder_target.get('kind')!r}"
    for attr in ("arch", "mcpu"):
        if attr in folder_target and str(rec_target.get(attr, "")) != str(folder_target[attr]):
            return f"{attr}={rec_target.get(attr)!r}, this folder is for {attr}={folder_target[attr]!r}"
    return None


def _stamp(folder: Path) -> tuple:
    out = []
    for name in (WORKLOAD_FILE, RECORD_FILE):
        try:
            st = os.stat(folder / name)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def _open_database(folder: Path, meta: dict) -> ms.database.Database:
    """The folder's usable records, read again when a database file changed (tuning in this process)."""
    target = json.dumps(meta.get("target", {}), sort_keys=True)
    return _read_database(str(folder), _stamp(folder), target)


@functools.lru_cache(maxsize=16)
def _read_database(folder: str, _stamp: tuple, target_json: str) -> ms.database.Database:
    """An in-memory database of the lines that parse (each problem warned about once per content)."""
    path, folder_target = Path(folder), json.loads(target_json)
    for name, st in zip((WORKLOAD_FILE, RECORD_FILE), _stamp):
        if st is None:
            warn_user(f"tuning log {path / name} is missing: no records of {path} are used", TuningLogWarning)
            return ms.database.MemoryDatabase()
    scan = scan_database(path)
    for problem in scan.problems:
        warn_user(f"damaged tuning log line {problem}; skipped (the other records are used)", TuningLogWarning)
    db = ms.database.MemoryDatabase()
    for wl in scan.workloads:
        db.commit_workload(wl.parsed.mod)
    for rec in scan.records:
        why = _record_target_mismatch(rec.target, folder_target)
        if why is not None:
            warn_user(f"tuning record {path / RECORD_FILE}:{rec.number} was tuned for {why}; skipped",
                      TuningLogWarning)
            continue
        db.commit_tuning_record(rec.parsed)
    return db


# --- repairing a folder before writing to it -------------------------------------------------------
_INDEX = re.compile(r"^\s*\[\s*-?\d+\s*,")


def repair_folder(folder: Path) -> list[str]:
    """Make `folder`'s database readable and appendable by MetaSchedule, keeping every good line.

    Damaged lines (and records whose workload line is damaged) are dropped, records are renumbered
    onto the workload lines kept, blank lines go and a missing final newline is added. Each file
    rewritten is first copied to `<file>.damaged-<time>`; files are replaced atomically. Returns
    what was done (empty when nothing was needed) and warns (`TuningLogWarning`) when lines were
    dropped. Call it with the folder's write lock held.
    """
    scan = scan_database(folder)
    renumbered = any(rec.workload_index != json.loads(rec.text)[0] for rec in scan.records)
    if not scan.problems and not scan.normalised and not renumbered:
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rewrite = {RECORD_FILE, WORKLOAD_FILE} if scan.problems or renumbered else set(scan.normalised)
    contents = {
        WORKLOAD_FILE: [w.text for w in scan.workloads],
        RECORD_FILE: [_INDEX.sub(f"[{r.workload_index},", r.text, count=1) for r in scan.records],
    }
    done = []
    for name in sorted(rewrite):
        path = folder / name
        if not path.is_file():
            continue
        backup = path.with_name(f"{name}.damaged-{stamp}")
        n = 1
        while backup.exists():
            n += 1
            backup = path.with_name(f"{name}.damaged-{stamp}-{n}")
        shutil.copy2(path, backup)
        _replace_lines(path, contents[name])
        done.append(f"rewrote {path} with its {len(contents[name])} good lines (original kept as {backup.name})")
    if scan.problems:
        warn_user(
            f"repaired the tuning log in {folder}: dropped {len(scan.problems)} damaged line(s) "
            f"({'; '.join(scan.problems)}); " + "; ".join(done),
            TuningLogWarning,
        )
    return done


def _replace_lines(path: Path, lines: list[str]) -> None:
    """Write `lines` to `path` atomically (`module_cache._write_atomically`: a temporary file beside
    it, renamed over it, removed if the write fails)."""
    text = "".join(line + "\n" for line in lines)
    module_cache._write_atomically(path, lambda tmp: Path(tmp).write_text(text), "")  # noqa: SLF001


def drop_workload(folder: Path, wl: ConvWorkload) -> int:
    """Remove `wl`'s records from `folder`: its database records with their workload lines (the
    other records renumbered onto the lines kept: MetaSchedule's lines are in tuning order, not the
    meta's, so nothing is matched by position) and its `meta.json` entry. Returns how many records
    went. For a record that made a layer slower (`tune.py --drop`); call it with the folder's
    write lock held."""
    repair_folder(folder)
    mod = workload_module(wl)
    scan = scan_database(folder)
    mine = {i for i, w in enumerate(scan.workloads) if tvm_ffi.structural_equal(w.parsed.mod, mod)}
    dropped = sum(r.workload_index in mine for r in scan.records)
    if mine:
        index = {old: new for new, old in enumerate(i for i in range(len(scan.workloads)) if i not in mine)}
        _replace_lines(folder / WORKLOAD_FILE, [w.text for i, w in enumerate(scan.workloads) if i not in mine])
        _replace_lines(folder / RECORD_FILE, [_INDEX.sub(f"[{index[r.workload_index]},", r.text, count=1)
                                              for r in scan.records if r.workload_index not in mine])
    meta = read_meta(folder)
    if meta is not None:
        entries = [e for e in meta.get("entries", []) if entry_workload(e) != wl]
        if len(entries) != len(meta.get("entries", [])):
            _replace_lines(folder / META_FILE, [json.dumps(meta | {"entries": entries}, indent=1)])
    return dropped


def keep_newest_record(folder: Path, mod: tvm.IRModule) -> int:
    """Drop every record of `mod`'s workload but the last one written; returns how many went.

    The folder holds one record per workload (its `meta.json` entry describes that one): a
    re-tune that is kept replaces the record it beat. Call it with the folder's write lock held,
    on a repaired folder.
    """
    scan = scan_database(folder)
    mine = {i for i, w in enumerate(scan.workloads) if tvm_ffi.structural_equal(w.parsed.mod, mod)}
    drop = {r.number for r in scan.records if r.workload_index in mine}
    drop.discard(max(drop, default=0))
    if not drop:
        return 0
    path = folder / RECORD_FILE
    lines, _ = _lines(path)
    _replace_lines(path, [text for number, text in lines if number not in drop])
    return len(drop)


def read_meta(folder: Path) -> dict | None:
    """The folder's `meta.json`, None without one; raises `TuningLogError` when it is damaged."""
    path = folder / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise TuningLogError(f"{path} is damaged (not JSON: {_short(e)})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("entries", []), list):
        raise TuningLogError(f"{path} is damaged (not an object with a list of 'entries')")
    return meta


def meta_header(target: Target, device_name: str = "") -> dict:
    """What a folder's `meta.json` says of its device: TVM version, device name, target and (CPUs)
    ISA family, the family that decides which other CPUs may use its records."""
    head = {"tvm_version": tvm.__version__, "device_name": device_name,
            "target": {k: v for k, v in target.export().items() if k in ("kind", "arch", "mcpu", "num-cores")}}
    if target.kind.name == "llvm":
        head["isa_family"] = target_isa_family(target)
    return head


def ensure_meta(folder: Path, target: Target, device_name: str = "") -> None:
    """Give `folder` a `meta.json` (no MetaSchedule entries) when it has none: a folder holding only
    generated algorithms' tile records is then found by other devices of its family (`family_folders`)."""
    if not (folder / META_FILE).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META_FILE).write_text(json.dumps({**meta_header(target, device_name), "entries": []}, indent=1) + "\n")


def meta_family(meta: dict) -> str:
    """The family of a folder's device: a GPU's from its target's arch; a CPU's from its target's
    `mcpu` where this LLVM knows the CPU, else the `isa_family` recorded by `tune.py` (meta.json
    written before it has none)."""
    rec_target = meta.get("target", {}) if isinstance(meta.get("target"), dict) else {}
    if rec_target.get("kind") == "cuda":
        return cuda_family(str(rec_target.get("arch") or "") or None)
    if rec_target.get("kind") != "llvm":
        return GENERIC_FAMILY
    family = isa_family(str(rec_target.get("mcpu", "")))
    if family == GENERIC_FAMILY:
        family = str(meta.get("isa_family") or GENERIC_FAMILY)
    return family


def meta_matches(meta: dict, target: Target, same_family: bool = False) -> str | None:
    """None when the folder's records may be used for `target`; else why not.

    `same_family`: another device of `target`'s family is accepted (a CPU's `mcpu` may differ).
    """
    if meta.get("tvm_version") != tvm.__version__:
        return f"tuned with TVM {meta.get('tvm_version')}, this is TVM {tvm.__version__}"
    rec_target = meta.get("target", {})
    if rec_target.get("kind") != target.kind.name:
        return f"tuned for target kind {rec_target.get('kind')!r}, not {target.kind.name!r}"
    if same_family:
        family = target_isa_family(target)
        if family == GENERIC_FAMILY or meta_family(meta) != family:
            return f"tuned for a device of family {meta_family(meta)!r}, this target's is {family!r}"
        return None
    for attr in ("arch", "mcpu"):
        want = str(target.attrs.get(attr, "")) if attr in target.attrs else ""
        have = str(rec_target.get(attr, ""))
        if want != have:
            return f"tuned for {attr}={have!r}, this target has {attr}={want!r}"
    return None


def entry_workload(entry: object) -> ConvWorkload | None:
    """The workload of a `meta.json` entry, None when the entry is damaged."""
    try:
        return ConvWorkload.from_json(entry["workload"])  # type: ignore[index]
    except Exception:  # noqa: BLE001 - any malformed entry
        return None


def _usable_entries(meta: dict, folder: Path) -> list[tuple[dict, ConvWorkload]]:
    """The entries of `meta.json` that parse and are for this TVM (the others warned about once)."""
    out = []
    for i, entry in enumerate(meta.get("entries", [])):
        wl = entry_workload(entry)
        if wl is None:
            _warn_once(folder, f"tuning log {folder / META_FILE}: entry {i} is damaged; skipped")
            continue
        version = entry.get("tvm_version", meta.get("tvm_version"))
        if version != tvm.__version__:
            _warn_once(folder, f"tuning log {folder / META_FILE}: entry {i} ({entry.get('problem', '?')}) was "
                               f"tuned with TVM {version}, this is TVM {tvm.__version__}; skipped")
            continue
        out.append((entry, wl))
    return out


def _pick_entry(entries: list[tuple[dict, ConvWorkload]], wl: ConvWorkload) -> tuple[dict, ConvWorkload] | None:
    """The record of `wl` itself, else of the same problem with the nearest ELL width (wider first):
    with `wl`'s own epilogue first, then another epilogue (its trace inlines the block that `wl` has
    too), then none (inlined after the replay). A record with an epilogue never serves a layer without."""
    fam = _family(wl)
    same = [(e, w) for e, w in entries if _family(w) == fam]
    tiers = ([(e, w) for e, w in same if (w.has_bias, w.activation) == (wl.has_bias, wl.activation)],
             [(e, w) for e, w in same if _has_epilogue(wl) and _has_epilogue(w)],
             [(e, w) for e, w in same if _has_epilogue(wl) and not _has_epilogue(w)])
    same = next((tier for tier in tiers if tier), [])
    if not same:
        return None
    width = lambda ew: ew[1].ell_width  # noqa: E731
    wider = [ew for ew in same if width(ew) >= wl.ell_width]
    if wider:
        return min(wider, key=width)
    return max(same, key=width)


def _folder_meta(folder: Path, target: Target, same_family: bool = False) -> dict | None:
    """The folder's `meta.json` when its records may be used for `target` (`same_family`: also when
    tuned on another device of its family); else None, with a warning (once per folder and reason)
    when the folder has records that cannot be used."""
    if not folder.is_dir():
        return None
    try:
        meta = read_meta(folder)
    except (TuningLogError, OSError) as e:
        _warn_once(folder, f"{e}: the tuning records of {folder} are not used")
        return None
    if meta is None:
        if (folder / RECORD_FILE).is_file() or (folder / WORKLOAD_FILE).is_file():
            _warn_once(folder, f"tuning log folder {folder} has no {META_FILE} (which says the TVM version and "
                               "target its records are for): its records are not used")
        return None
    why = meta_matches(meta, target)
    if why is not None and not (same_family and meta_matches(meta, target, same_family=True) is None):
        _warn_once(folder, f"tuning log folder {folder} was {why}: its records are not used")
        return None
    return meta


def family_folders(target: Target, root: Path | None = None, own: str | None = None) -> list[tuple[Path, dict]]:
    """(folder, meta) of the other devices of `target`'s family under `root` whose records may be
    used here (same TVM version), in the order they are searched: CPUs of the same vendor first,
    then by name. `own`: this device's folder name (default `targets.target_folder_name`, which
    asks the GPU for a CUDA target)."""
    family = target_isa_family(target)
    root = root or logs_root()
    if family == GENERIC_FAMILY or not root.is_dir():
        return []
    own = own or target_folder_name(target)
    vendor = cpu_vendor(str(target.attrs.get("mcpu", ""))) if target.kind.name == "llvm" else ""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != own):
        try:
            meta = read_meta(folder)
        except (TuningLogError, OSError):
            continue  # another device's damaged folder: its own users are warned
        if meta is None or meta_matches(meta, target, same_family=True) is not None:
            continue
        mcpu = str(meta.get("target", {}).get("mcpu", ""))
        found.append((bool(vendor) and cpu_vendor(mcpu) != vendor, folder.name, folder, meta))
    return [(folder, meta) for *_, folder, meta in sorted(found, key=lambda f: f[:2])]


def find_tuned_schedule(wl: ConvWorkload, target: Target, folder: Path | None = None) -> TunedSchedule | None:
    """A schedule of `wl` replayed from the best matching record for `target`, or None.

    Without `folder`: on a CPU, this CPU's folder, else the first folder of another CPU of its ISA
    family with a record of `wl` (`family_folders`); on a GPU, the fastest of this GPU's record and
    those of the other GPUs of its architecture, theirs weighed `family_time_factor` slower. A
    record of another device (also from a `folder` given) is marked `travelled`. Damaged or
    misplaced records are skipped with a `TuningLogWarning`, never raised.
    """
    family = target_isa_family(target)
    if folder is not None:
        meta = _folder_meta(folder, target, same_family=True)
        tuned = _replayed(wl, target, folder, meta) if meta is not None else None
        if tuned is not None and meta_matches(meta, target) is not None:
            tuned = replace(tuned, family=family)
        return tuned
    own = logs_root() / target_folder_name(target)
    meta = _folder_meta(own, target)
    tuned = _replayed(wl, target, own, meta) if meta is not None else None
    factor = family_time_factor(family)
    if tuned is not None and factor is None:
        return tuned
    found = [tuned] if tuned is not None else []
    for other, other_meta in family_folders(target):
        travelled = _replayed(wl, target, other, other_meta)
        if travelled is not None:
            if factor is None:
                return replace(travelled, family=family)
            found.append(replace(travelled, family=family))
    # GPUs: own first on a tie (min keeps the first)
    return min(found, key=lambda t: weighed_us(t.estimated_us, t.family)) if found else None


#: whether CPU records of the relayout in chunks of 1024 replay with the blocked one (off only to
#: measure the difference: benchmarks/experiments/cpu_gather_share.py)
UPGRADE_RELAYOUT = True


def _replayed(wl: ConvWorkload, target: Target, folder: Path, meta: dict) -> TunedSchedule | None:
    """`wl` scheduled by the folder's record of it (or of its nearest ELL width), or None."""
    picked = _pick_entry(_usable_entries(meta, folder), wl)
    if picked is None:
        return None
    entry, tuned_wl = picked
    with _LOCK:  # the database object is shared; queries are cheap
        db = _open_database(folder, meta)
        record = db.query_tuning_record(workload_module(tuned_wl), target, "main")
    if record is None:
        return None
    sch = s_tir.Schedule(workload_module(wl))
    try:
        # CPU records of before the blocked relayout get it (`schedules/cpu.py`); CUDA records their
        # cache_writes before the loops are split (else a write-back may store past the output:
        # `with_cache_writes_first`); the rest replays as recorded
        relayout = target.kind.name == "llvm" and UPGRADE_RELAYOUT
        upgraded = without_old_relayout(record.trace) if relayout else None
        if target.kind.name == "cuda":
            upgraded = with_cache_writes_first(record.trace)
        (upgraded or record.trace).apply_to_schedule(sch, remove_postproc=False)
        if relayout and upgraded is not None:
            schedule_relayout(sch, sch.get_sblock(X_GATHER))
        if _has_epilogue(wl) and not _has_epilogue(tuned_wl) and sblock_or_none(sch, EPILOGUE) is not None:
            # As the record's rule does when it sees an epilogue. (An algorithm whose compute always
            # has one, union-tf32's NHWC reshape, inlined it already.)
            rule = next((r for r in RULES if r.name == entry.get("rule")), SparseConvRule())  # unnamed: inline
            # (the input stage may be gone: inlined by the replay, and the epilogue does not need it)
            rule.attach_epilogue(sch, SparseConvBlocks(None, sblock_or_none(sch, CONV), sch.get_sblock(EPILOGUE)))
    except Exception:  # noqa: BLE001 - a trace that does not fit this width or epilogue: fall back
        return None
    return TunedSchedule(sch, folder, entry.get("rule", "?"), tuned_wl, entry.get("run_us"), layer_width=wl.ell_width)
