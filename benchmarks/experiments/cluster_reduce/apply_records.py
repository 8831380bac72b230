"""Merge the tile records that `scripts/tune.py --summary-json` runs on the GPU machine made into
this checkout's tuning logs (the GPU machine's copy of the record file does not come back when a
run returns more than its 8 files): for each workload whose summary says "recorded", the record
tune.py wrote there (`tile_tuning.search`), with the summary's times.

    python benchmarks/experiments/cluster_reduce/apply_records.py SUMMARY.json [...] --device nvidia-h200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tvm_sparseconv import tile_records
from tvm_sparseconv.tile_tuning import TileSearch, generated_workload, tile_record
from tvm_sparseconv.workloads import workload_set


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summaries", nargs="+", type=Path)
    ap.add_argument("--device", required=True, help="the tuning-log folder's device name, e.g. nvidia-h200")
    args = ap.parse_args(argv)
    folder = Path(__file__).resolve().parents[3] / "tuning_logs" / args.device
    for path in args.summaries:
        summary = json.loads(path.read_text())
        algorithm = summary["algorithm"]
        for w in summary["workloads"]:
            if not w.get("recorded"):
                print(f"{w['problem']}: not recorded ({w.get('why_not', '')})")
                continue
            kernel, wl = generated_workload(workload_set(w["problem"])[0], algorithm, "cuda")
            assert int(kernel.nnz) == w["nonzeros"], f"{w['problem']}: the pattern differs from the run's"
            result = TileSearch(w["problem"], algorithm, w["nonzeros"], w["tiles"], w["scheduled"])
            assert result.best == w["recorded"], f"{w['problem']}: the summary's best is not its recorded tile"
            new = tile_record(result, wl, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(path.stat().st_mtime)))
            # the device as tune.py names it there (targets.device_name), kept from the file
            existing = tile_records.path_for(folder, algorithm)
            device = json.loads(existing.read_text())["device"] if existing.is_file() else args.device
            tile_records.merge(folder, algorithm, device, "scripts/tune.py", [new])
            print(f"{w['problem']}: {new['tile']} {new['seconds'] * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
