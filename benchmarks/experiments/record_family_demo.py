#!/usr/bin/env python
"""Issue 15 (records that travel): `make demo` as on another CPU model of this CPU's ISA family. Not library code.

  python benchmarks/experiments/record_family_demo.py --mcpu haswell \
      --out benchmarks/experiments/record_family_demo-cpu-znver3-as-haswell.json

Copies `tuning_logs/` to a temporary folder with this CPU's folder renamed to `cpu-<mcpu>` (its
meta.json and records' target say `mcpu` too), so that this CPU has no record of its own and the
other CPU's is the only one of its family; then runs `scripts/demo.py` twice with an empty disk
cache: the first run checks the record here (float64, verdict kept in the cache), the second reads
the verdict. Each run's `--json` output and whether an UntunedWarning was printed are collected.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def as_other_cpu(logs: Path, own: str, mcpu: str) -> None:
    """Rename `logs/own` to `logs/cpu-<mcpu>` and make its meta and records say `mcpu`."""
    folder = logs / f"cpu-{mcpu}"
    (logs / own).rename(folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["target"]["mcpu"] = mcpu
    meta["device_name"] = f"CPU {mcpu} (really {meta.get('device_name', own)})"
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    records = folder / "database_tuning_record.json"
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    for line in lines:
        line[1][2]["mcpu"] = mcpu
    records.write_text("".join(json.dumps(line) + "\n" for line in lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mcpu", default="haswell", help="the other CPU model of this CPU's family")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from tvm_sparseconv import targets

    host = targets.host_cpu_target()
    own, family = targets.target_folder_name(host), targets.target_isa_family(host)
    if targets.isa_family(args.mcpu) != family or family == targets.GENERIC_FAMILY:
        raise SystemExit(f"{args.mcpu} is of family {targets.isa_family(args.mcpu)}, this CPU's is {family}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp) / "tuning_logs"
        shutil.copytree(ROOT / "tuning_logs", logs)
        as_other_cpu(logs, own, args.mcpu)
        env = dict(os.environ, TVM_SPARSECONV_TUNING_LOGS=str(logs), TVM_SPARSECONV_CACHE=str(Path(tmp) / "cache"))
        for i in (1, 2):
            out = Path(tmp) / f"demo-{i}.json"
            proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--json", str(out)],
                                  env=env, capture_output=True, text=True)
            print(proc.stdout + proc.stderr)
            run = json.loads(out.read_text()) if out.is_file() else {}
            run["untuned_warning"] = "UntunedWarning" in proc.stdout + proc.stderr
            runs.append(run)
        verdicts = [json.loads(p.read_text()) for p in (Path(tmp) / "cache").rglob("*.verdict.json")]
    result = {"experiment": "record_family_demo", "this_cpu": own, "family": family, "record_from": f"cpu-{args.mcpu}",
              "runs": runs, "verdicts": verdicts}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
