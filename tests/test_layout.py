"""The package's three wings and the rule between them: the kernel library (gedi_fast's top level, ops/,
reference/, the Triton kernels) imports neither the training application (gedi_fast.train) nor the
experiments (gedi_fast.experiments); the training application does not import the experiments; and
only the entry point imports the command line. Read from the source, imports inside functions included."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Modules that may import any wing: the command line and its entry points.
ENTRY = {"gedi_fast.cli", "gedi_fast.command", "gedi_fast.__main__"}
# Which wings each wing must not import.
FORBIDDEN = {"library": {"train", "experiments", "entry"}, "train": {"experiments", "entry"},
             "experiments": {"entry"}, "entry": set()}


def module_files() -> dict[str, pathlib.Path]:
    """Every module of the installed package by dotted name, the Triton kernels as gedi_fast.kernels."""
    files = {}
    for folder, package in ((ROOT / "gedi_fast", "gedi_fast"), (ROOT / "kernels", "gedi_fast.kernels")):
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def wing(module: str) -> str:
    if module in ENTRY:
        return "entry"
    for name in ("train", "experiments"):
        if module == f"gedi_fast.{name}" or module.startswith(f"gedi_fast.{name}."):
            return name
    return "library"


def imported_modules(module: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its file (`from gedi_fast.x import name`
    counts as gedi_fast.x, or gedi_fast.x.name where that is a module)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {module: imported_modules(module, path, set(files)) for module, path in files.items()}


def test_the_scan_sees_the_imports_it_must_judge():
    graph = import_graph()
    assert {"gedi_fast.loss", "gedi_fast.train.recovery", "gedi_fast.train.seeds"} <= graph["gedi_fast.train.trainer"]
    assert "gedi_fast.ops.gedi" in graph["gedi_fast.loss"] and "gedi_fast.cli" in graph["gedi_fast.command"]
    assert wing("gedi_fast.kernels.gedi_terms") == "library" and wing("gedi_fast.experiments.studies") == "experiments"


def test_no_wing_imports_one_it_must_not():
    wrong = [f"{module} ({wing(module)}) imports {target} ({wing(target)})"
             for module, targets in import_graph().items() for target in sorted(targets)
             if wing(target) in FORBIDDEN[wing(module)]]
    assert not wrong, "\n".join(wrong)


def test_nothing_but_the_entry_point_imports_the_command_line():
    importers = sorted(module for module, targets in import_graph().items() if "gedi_fast.cli" in targets)
    assert importers == ["gedi_fast.command"]


def test_the_package_has_no_import_circle():
    graph = import_graph()
    circles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # A package imports its own modules from __init__; a module importing its package's face is no circle.
    circles = [c for c in circles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not circles, circles


HEAVY = ("sklearn", "matplotlib")


def run_probe(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)


@pytest.mark.parametrize("what, code", [
    ("import gedi_fast", "import gedi_fast"),
    ("gedi-fast train --help", "from gedi_fast.command import main\ntry:\n    main(['train', '--help'])\n"
                                "except SystemExit:\n    pass"),
])
def test_the_library_and_train_help_import_neither_scikit_learn_nor_matplotlib(what, code):
    result = run_probe(f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", what


REFUSE_TRAIN_EXTRA = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("sklearn", "matplotlib", "scipy", "tqdm"):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Refuse())
"""


def test_without_the_train_extra_the_library_runs_and_the_commands_name_the_extra():
    code = REFUSE_TRAIN_EXTRA + (
        "import torch, gedi_fast\n"
        "loss = gedi_fast.GEDILoss(gen_weight=0, energy_reg=0)(torch.randn(5, 3, requires_grad=True), torch.randn(5, 3))\n"
        "loss.backward()\n"
        "from gedi_fast.command import main\n"
        "print('exit', main(['train', '--help']))\n")
    result = run_probe(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "exit 2"
    message = result.stderr.strip()
    assert message.startswith("gedi-fast: error:") and len(message.splitlines()) == 1
    for named in ("scipy, scikit-learn, matplotlib, tqdm", 'pip install "gedi-fast[train]"', 'pip install -e ".[train]"'):
        assert named in message
