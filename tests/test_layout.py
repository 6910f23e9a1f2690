"""The walls the folder names promise: the runtime never loads torch, stages/ holds only stages.

engines/runtime/, stages/ and pipeline/ are what every live process imports; engines/training/
is the offline side (torch). A torch import in a live process costs about 1.5 s per process start
and hundreds of MB, so these tests fail as soon as a runtime module imports torch or anything from
engines.training, at import time or lazily inside a function. The process-level check (no torch in
any running stage process) stays in tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

LIVE_PACKAGES = ("engines/runtime", "stages", "pipeline")


def _modules(folder: str) -> list[str]:
    pkg = folder.replace("/", ".")
    return sorted(f"{pkg}.{p.stem}" for p in (REPO / folder).glob("*.py") if p.stem != "__init__")


LIVE_MODULES = [m for folder in LIVE_PACKAGES for m in _modules(folder)]


def test_live_modules_are_found():
    """The lists below are not empty by accident (a moved folder would make the tests vacuous)."""
    assert {"engines.runtime.engine", "engines.runtime.codec", "stages.lift",
            "pipeline.schema"} <= set(LIVE_MODULES)
    assert len(LIVE_MODULES) >= 30


def test_importing_every_live_module_leaves_torch_out():
    """A fresh interpreter imports every runtime, stage and pipeline module: no torch, no trainer."""
    code = (
        "import importlib, sys\n"
        f"for name in {LIVE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m in ('torch', 'engines.training')\n"
        "             or m.startswith('engines.training.'))\n"
        "print('LOADED', len([m for m in sys.modules]), 'BAD', bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("BAD []"), result.stdout


def _imported_names(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", LIVE_MODULES)
def test_no_live_module_imports_torch_even_lazily(module):
    """Not even inside a function: a lazy torch import would load it in a live process later."""
    path = REPO / (module.replace(".", "/") + ".py")
    crossing = sorted(n for n in _imported_names(path)
                      if n.split(".")[0] == "torch" or n.startswith("engines.training"))
    assert not crossing, f"{path.relative_to(REPO)} imports {crossing}: the runtime must stay torch-free"


@pytest.mark.parametrize("module", _modules("stages"))
def test_stages_holds_only_stages(module):
    """Each stages/<name>.py defines exactly one Stage subclass whose name is the module's name."""
    from pipeline.stage import Stage

    mod = importlib.import_module(module)
    own = [obj for _, obj in inspect.getmembers(mod, inspect.isclass)
           if issubclass(obj, Stage) and obj.__module__ == mod.__name__ and hasattr(obj, "name")
           and not inspect.isabstract(obj)]
    assert len(own) == 1, f"{module} defines {[c.__name__ for c in own]}"
    assert own[0].name == module.rsplit(".", 1)[1]
