"""Child process of `nvptx_build.compile_nvptx_pieces`: pickled tasks (PrimFunc recipes) compiled
by `nvptx_build.compile_tasks`, each claimed by the first child free for it (a file created
exclusively), so that the children finish together.

    python -m tvm_sparseconv.nvptx_worker JOB.pkl   # writes JOB.pkl.<i>.out per task i it claims
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path


def main(job: str) -> int:
    import tvm_sparseconv  # noqa: F401 - registers tvm_sparseconv.schedules for the recipes' pickles
    from tvm_sparseconv.nvptx_build import compile_tasks

    tasks, kernel, arch, max_registers = pickle.loads(Path(job).read_bytes())
    for i, task in enumerate(tasks):
        try:
            os.close(os.open(f"{job}.{i}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue  # another child has it
        done = compile_tasks([task], kernel, arch, max_registers)[0]
        Path(f"{job}.{i}.part").write_bytes(pickle.dumps(done))
        os.replace(f"{job}.{i}.part", f"{job}.{i}.out")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
