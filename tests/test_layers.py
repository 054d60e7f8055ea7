"""The house's layers, read from the code: the core imports no stage, stages do not import each other.

The core is nexttouch/ without its orchestration (nexttouch/jobs/ and the CLI). features/, training/
and serving/ import the core; serving reads the online store through the features stage's reader,
its one public module. Every import counts, function-local ones too.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("features", "training", "serving")
ORCHESTRATION = ("nexttouch/jobs/", "nexttouch/cli.py")
PUBLIC = {"features.online_read"}  # what another stage may import from a stage


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def test_the_core_imports_no_stage() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _modules("nexttouch")
        if not str(path.relative_to(ROOT)).startswith(ORCHESTRATION)
        for line, module in _imports(path)
        if _top(module) in STAGES
    ]
    assert bad == []


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_the_core_not_another_stages_internals(stage: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _modules(stage)
        for line, module in _imports(path)
        if _top(module) in STAGES and _top(module) != stage and module not in PUBLIC
    ]
    assert bad == []


def test_the_check_sees_a_function_local_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from serving.decisions import Decisions\n    return Decisions\n")
    assert _imports(module) == [(2, "serving.decisions")]
