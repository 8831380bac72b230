"""Child process of `nvptx_build.compile_nvptx_pieces`: pickled tasks (PrimFunc recipes) compiled
by `nvptx_build.compile_tasks`.

    python -m tvm_sparseconv.nvptx_worker JOB.pkl   # writes JOB.pkl.out
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path


def main(job: str) -> int:
    import tvm_sparseconv  # noqa: F401 - registers tvm_sparseconv.schedules for the recipes' pickles
    from tvm_sparseconv.nvptx_build import compile_tasks

    tasks, kernel, arch, max_registers = pickle.loads(Path(job).read_bytes())
    Path(job + ".out").write_bytes(pickle.dumps(compile_tasks(tasks, kernel, arch, max_registers)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
