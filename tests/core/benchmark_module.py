"""Load a script under ``benchmarks/`` as a module, for tests of its pieces (benchmarks are not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

#: The repository's ``benchmarks/`` folder.
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The benchmark script ``benchmarks/<name>.py``, executed as a fresh module named ``name``."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
