"""Make `tvm_sparseconv.schedules` importable when running from a source checkout.

pyproject maps the top-level `schedules/` folder to `tvm_sparseconv.schedules` for installed and
editable installs. A bare checkout on PYTHONPATH (e.g. the GPU machine, where nothing is installed)
has no such mapping, so register the folder under its namespaced name here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

NAME = "tvm_sparseconv.schedules"


def ensure_schedules_importable() -> None:
    if NAME in sys.modules or importlib.util.find_spec(NAME) is not None:
        return
    folder = Path(__file__).resolve().parent.parent / "schedules"
    spec = importlib.util.spec_from_file_location(
        NAME, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot find the schedule templates: {folder} is missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
