"""The layering of DESIGN.md, checked on the source: ``recsys`` <- ``models`` <- ``pipelines``; ``serving`` uses
``recsys`` and ``models`` and never ``pipelines``; nothing below imports what sits above it at module level."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package -> packages it may not import (module level; for serving: anywhere)
FORBIDDEN = {"recsys": {"models", "pipelines", "serving"}, "models": {"pipelines", "serving"},
             "serving": {"pipelines"}, "pipelines": {"serving"}}


def _imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_the_layering(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        found = _imports(path, module_level_only=package != "serving") & FORBIDDEN[package]
        if found:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(found)}")
    assert not bad, "\n".join(bad)
