"""`python -m tvm_sparseconv.tf_op`: build (if needed) and load the TensorFlow op library; print its path.

`make setup` runs this, so the README's set-up builds the op. Exit status 1, with the reason (e.g.
which compiler to install), when it cannot be built.
"""

import sys

from . import OpLibraryError, library_path, load


def main() -> int:
    try:
        load()
    except OpLibraryError as e:
        print(f"tvm_sparseconv: {e}", file=sys.stderr)
        return 1
    print(f"tvm_sparseconv TensorFlow op: {library_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
