"""The torch-free side stays torch-free: solvers, the Problem / Schedule / simulate core, the registry
and the sandbox import without torch, and so does loading a scenario (schema checks only).

Each check runs in a fresh interpreter: in the test process torch is already imported by other tests,
which would hide an import. On failure the message shows the stack that first imported torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

CORE = ["mutwo.problem", "mutwo.schedule", "mutwo.linkmodel", "mutwo.simulate", "mutwo.synthetic",
        "mutwo.registry", "mutwo.sandbox", "mutwo.plan_space", "mutwo.solver_options",
        "mutwo.devices"]
SOLVERS = ["solvers", *sorted(f"solvers.{p.stem}" for p in (ROOT / "solvers").glob("*.py") if p.stem != "__init__")]
# torch side, but importing them must not need torch: a scenario is validated against them
SCHEMA_SIDE = ["mutwo.workload", "mutwo.zoo", "mutwo.scenario"]

# records the stack of the first `import torch`, then lets the import go ahead as usual
_SPY = '''
import sys, traceback
class _Spy:
    stack = None
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and _Spy.stack is None:
            _Spy.stack = "".join(traceback.format_stack(limit=16)[:-1])
sys.meta_path.insert(0, _Spy())
'''


def _imports_torch(code: str) -> str | None:
    """Run ``code`` in a fresh interpreter from the repository root; the stack that imported torch, or
    None when it did not."""
    check = "\nif 'torch' in sys.modules:\n    print(_Spy.stack or 'torch imported (stack not seen)')\n"
    res = subprocess.run([sys.executable, "-c", _SPY + code + check], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip() or None


def test_the_module_lists_are_not_empty():
    assert len(SOLVERS) >= 6 and "solvers.mutwo_greedy" in SOLVERS and "solvers.ilp" in SOLVERS


@pytest.mark.parametrize("module", CORE + SOLVERS + SCHEMA_SIDE)
def test_module_imports_without_torch(module):
    stack = _imports_torch(f"import {module}")
    assert stack is None, f"importing {module} imports torch:\n{stack}"


def test_loading_every_builtin_solver_keeps_torch_out():
    stack = _imports_torch("from mutwo.registry import available_solvers\nassert len(available_solvers()) >= 10")
    assert stack is None, f"loading the built-in solvers imports torch:\n{stack}"


def test_loading_the_shipped_scenarios_keeps_torch_out():
    """Validating a zoo scenario (model name and options, optimizer and solver options) needs no torch;
    building the model does, later."""
    code = ("from pathlib import Path\nfrom mutwo.scenario import load_scenario\n"
            "for p in sorted(Path('scenarios').glob('*.yaml')):\n    load_scenario(p)\n")
    stack = _imports_torch(code)
    assert stack is None, f"loading a scenario imports torch:\n{stack}"


def test_a_torch_import_is_caught(tmp_path):
    """The check itself: a module that imports torch is reported, with the line that did it."""
    (tmp_path / "_uses_torch.py").write_text("import torch\n")
    stack = _imports_torch(f"sys.path.insert(0, {str(tmp_path)!r})\nimport _uses_torch")
    assert stack is not None and "_uses_torch.py" in stack
