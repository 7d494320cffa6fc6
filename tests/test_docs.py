"""README.md keeps step with the code: every task, setting, audit kind and manifest column.

In the style of sqlite-utils' tests/test_docs.py: the names come from the code, and each
must be documented; the README's task and settings tables may name nothing the code lacks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import sqlite_utils

from state.manifest import open_manifest
from tasks.audit.report import DAMAGE, KINDS
from tasks.settings import SETTING_KEYS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# the first cell of a table row: `doit audit [--deep]`, `caption_field`, `[dataloader]`
TASK_ROW = re.compile(r"^\| `doit(?: (\w+))?[^`]*` \|", re.M)
SETTING_ROW = re.compile(r"^\| `\[?(\w+)\]?` \|", re.M)
MANIFEST_ROW = re.compile(r"^\| `(\w+)` \| [^|]+ \| (.+) \|$", re.M)
DOIT_COMMANDS = {"list"}  # doit's own commands the task table also explains


def section(title: str) -> str:
    """The text of the README section headed `title`, up to the next heading of its level."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
    assert match, f"README.md has no section '{title}'"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def code_tasks() -> list[str]:
    """Task names from the `def task_<name>` creators of the module dodo.py loads them from
    (parsed: importing it reads settings)."""
    dodo = ast.parse((REPO / "dodo.py").read_text(encoding="utf-8"))
    module = next(
        (
            node.module
            for node in dodo.body
            if isinstance(node, ast.ImportFrom)
            and any(alias.name == "dodo_namespace" for alias in node.names)
        ),
        "dodo",
    )
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    return sorted(
        node.name.removeprefix("task_")
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("task_")
        and (module == "dodo" or any(_is_creator(d) for d in node.decorator_list))
    )


def _is_creator(decorator: ast.expr) -> bool:
    """`@creator(...)`: how tasks/build/doit_tasks.py marks a task."""
    return isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "creator"


def documented_tasks() -> set[str]:
    return {name for name in TASK_ROW.findall(section("Use")) if name}


def documented_settings() -> set[str]:
    return set(SETTING_ROW.findall(section("Settings")))


def kinds_listed(severity: str) -> set[str]:
    """The backticked names in the audit section's bullet for `damage` or `note`."""
    text = section("Audit and repair")
    bullet = re.search(rf"^- \*\*{severity}\*\*(.*?)(?=^- |^\n|\Z)", text, re.M | re.S)
    assert bullet, f"README.md's audit section has no '- **{severity}**' bullet"
    return set(re.findall(r"`(\w+)`", bullet.group(1)))


def manifest_schema(tmp_path: Path) -> dict[str, list[str]]:
    """table -> columns of a manifest freshly created by the build's own code."""
    open_manifest(tmp_path).close()
    db = sqlite_utils.Database(tmp_path / "state" / "manifest.sqlite")
    try:
        return {table.name: list(table.columns_dict) for table in db.tables}
    finally:
        db.close()


def documented_manifest() -> dict[str, set[str]]:
    """table -> backticked names in its row of the README's manifest table."""
    rows = MANIFEST_ROW.findall(section("The manifest"))
    return {table: set(re.findall(r"`(\w+)`", cells)) for table, cells in rows}


def test_the_code_has_what_these_tests_read():
    assert {"extract", "table", "audit", "repair"} <= set(code_tasks())
    assert {"root", "caption_field"} <= set(SETTING_KEYS)
    assert {"stray", "edited_json"} <= set(KINDS)


@pytest.mark.parametrize("task", code_tasks())
def test_tasks_are_documented(task):
    assert task in documented_tasks(), f"task `{task}` has no row in README.md's task table"


def test_documented_tasks_exist():
    gone = documented_tasks() - DOIT_COMMANDS - set(code_tasks())
    assert not gone, f"README.md's task table names tasks the code lacks: {sorted(gone)}"


@pytest.mark.parametrize("key", SETTING_KEYS)
def test_settings_are_documented(key):
    assert key in documented_settings(), f"setting `{key}` has no row in README.md's settings"


def test_documented_settings_exist():
    gone = documented_settings() - set(SETTING_KEYS)
    assert not gone, f"README.md's settings table names keys the code lacks: {sorted(gone)}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_audit_kinds_are_documented_with_their_severity(kind):
    severity, other = ("damage", "notes") if KINDS[kind][0] == DAMAGE else ("notes", "damage")
    assert kind in kinds_listed(severity), f"audit kind `{kind}` is not among README's {severity}"
    assert kind not in kinds_listed(other), f"audit kind `{kind}` is among README's {other} too"


def test_manifest_tables_and_columns_are_documented(tmp_path):
    documented = documented_manifest()
    for table, columns in manifest_schema(tmp_path).items():
        assert table in documented, f"manifest table `{table}` has no row in README.md"
        missing = sorted(set(columns) - documented[table])
        assert not missing, f"manifest table `{table}`: columns {missing} missing from README.md"


def test_documented_manifest_tables_exist(tmp_path):
    gone = set(documented_manifest()) - set(manifest_schema(tmp_path))
    assert not gone, f"README.md's manifest table names tables the manifest lacks: {sorted(gone)}"
