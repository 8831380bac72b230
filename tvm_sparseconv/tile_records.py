"""Records of generated algorithms: per device, the measured best tile of each layer shape.

A generated algorithm (`Algorithm.generated`, e.g. register-reuse) compiles the kernel's values
into its code, so MetaSchedule's records (a schedule for one PrimFunc) do not fit it. What carries
over between kernels of one layer shape is the tile: `tuning_logs/<device>/<algorithm>.json` holds,
per shape (input, kernel, strides, padding), the tile that won, its measured time and the number
of nonzeros it was measured with (its time grows with them: one FMA each). A shape may hold one
record per density, since the winning tile moves with it (H200 conv4 3x3 batch 32: g32p128x2GHR80
80.8 us against g32p32x8GH 86.2 at 90% zeros, 66.1 against 49.9 at 95%); `find` takes the one
measured nearest the kernel's nonzeros. `compile()` compares its time, scaled up where the layer's
kernel has more nonzeros (`estimated_seconds`), with the scheduled algorithms' records. A damaged
or foreign file is reported (`TuningLogWarning`) and ignored: the layer gets the default tile.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ._warnings import warn_user
from .tuning_records import TuningLogWarning, scaled_up
from .workload import ConvWorkload

VERSION = 1
#: records of one shape whose nonzeros are within this factor of each other count as one density
#: (a new one replaces the old); farther apart, both are kept
SAME_DENSITY = 1.25


def shape_key(wl: ConvWorkload) -> dict:
    """What a tile record is keyed on: the layer's shape (not its kernel's values, bias or activation)."""
    return {"input_shape": list(wl.input_shape), "kernel_shape": list(wl.kernel_shape),
            "strides": list(wl.strides), "pads": [list(p) for p in wl.pads]}


def path_for(folder: Path, algorithm: str) -> Path:
    return Path(folder) / f"{algorithm.replace('-', '_')}.json"


def read(path: Path, algorithm: str) -> list[dict]:
    """The records in `path` (none if it does not exist); a damaged file warns and gives none."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        if data.get("version") != VERSION or data.get("algorithm") != algorithm:
            raise ValueError(f"expected version {VERSION} records of {algorithm!r}, got version "
                             f"{data.get('version')!r} of {data.get('algorithm')!r}")
        records = data["records"]
        for r in records:
            if not isinstance(r["tile"], str) or not isinstance(r["seconds"], (int, float)) or r["seconds"] <= 0:
                raise ValueError("each record needs a tile name and its seconds (> 0)")
            if not isinstance(r.get("nonzeros", 1), int) or r.get("nonzeros", 1) <= 0:
                raise ValueError("a record's nonzeros must be a positive integer")
            for field in ("input_shape", "kernel_shape", "strides", "pads"):
                r["shape"][field]  # noqa: B018 - presence check
        return records
    except (OSError, ValueError, KeyError, TypeError) as e:
        warn_user(f"ignoring the {algorithm} records in {path}: {type(e).__name__}: {e}", TuningLogWarning)
        return []


def density_distance(record: dict, nonzeros: int | None) -> float:
    """How far `nonzeros` is from the record's own (|log ratio|; 0 where either is unknown)."""
    measured = record.get("nonzeros")
    return abs(math.log(nonzeros / measured)) if measured and nonzeros else 0.0


def same_density(record: dict, nonzeros: int | None) -> bool:
    return density_distance(record, nonzeros) <= math.log(SAME_DENSITY)


def find(folder: Path, algorithm: str, wl: ConvWorkload, nonzeros: int | None = None) -> dict | None:
    """The record of `wl`'s shape in `folder` measured nearest to `nonzeros` (the first where
    None), or None."""
    key = shape_key(wl)
    found = [r for r in read(path_for(folder, algorithm), algorithm) if r["shape"] == key]
    return min(found, key=lambda r: density_distance(r, nonzeros)) if found else None


def keeps(old: dict | None, new: dict, measured) -> bool:
    """Whether `old`, a folder's record of `new`'s shape, stays over `new`: of the same density, its
    tile not among the run's `measured` tiles, faster, and measured with the same code (the same
    `emitter_version`: a record of older code says nothing about its tile now, e.g. conv5 1x1
    reduce_first b32 70.4 us before the FMAs went in as PTX text and 104.8 after)."""
    return (old is not None and same_density(old, new.get("nonzeros")) and old["tile"] not in measured
            and old["seconds"] < new["seconds"] and old.get("emitter_version") is not None
            and old.get("emitter_version") == new.get("emitter_version"))


def estimated_seconds(record: dict, nonzeros: int) -> float:
    """The record's time for a kernel of `nonzeros` nonzeros: scaled up by their ratio to the
    record's own where the kernel has more (the code is one FMA per nonzero), never down
    (`tuning_records.scaled_up`): the scheduled algorithms' records are not scaled down either, and
    both get faster on sparser kernels (H200, half the nonzeros: register-reuse 0.55-0.78x, the
    gather 0.77x; crediting the full halving chose register-reuse on three batch-1 layers where it
    was slower)."""
    return scaled_up(float(record["seconds"]), record.get("nonzeros"), nonzeros)


def write(path: Path, algorithm: str, device: str, source: str, records: list[dict]) -> None:
    """Write `records` ({"shape", "tile", "seconds", "nonzeros", "layer"}) as `algorithm`'s records of `device`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": VERSION, "algorithm": algorithm, "device": device, "source": source,
                                "records": records}, indent=1) + "\n")


def drop(folder: Path, algorithm: str, wl: ConvWorkload, nonzeros: int | None = None) -> int:
    """Remove the records of `wl`'s shape (those of `nonzeros`' density, `same_density`, where
    given) from `algorithm`'s file in `folder` (`tune.py --drop`); how many went."""
    path = path_for(folder, algorithm)
    records = read(path, algorithm)
    key = shape_key(wl)
    kept = [r for r in records if not (r["shape"] == key and (nonzeros is None or same_density(r, nonzeros)))]
    if len(kept) != len(records):
        data = json.loads(path.read_text())
        write(path, algorithm, data["device"], data["source"], kept)
    return len(records) - len(kept)


def merge(folder: Path, algorithm: str, device: str, source: str, records: list[dict]) -> Path:
    """Write `records` into `algorithm`'s record file in `folder`, replacing the records of the same
    shapes and density (`same_density`) and keeping the others (their sources listed beside
    `source`); the file's path."""
    path = path_for(folder, algorithm)
    kept = [r for r in read(path, algorithm)
            if not any(r["shape"] == n["shape"] and same_density(r, n.get("nonzeros")) for n in records)]
    if kept:
        source = ", ".join(dict.fromkeys([*json.loads(path.read_text())["source"].split(", "), str(source)]))
    write(path, algorithm, device, str(source), kept + records)
    return path
