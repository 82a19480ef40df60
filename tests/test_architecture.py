"""The module map's rules, checked against the code (docs/architecture.md states them).

These read the source with `ast`; they run no project code. Each names the file and line
that breaks a rule, so a failure says what to move where.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("ordinaut", "agents", "tasks", "pipelines", "audit")
# Statements and ORM calls that write rows.
_SQL_WRITE = re.compile(r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+tasks_occurrence\b", re.I)
_ORM_WRITES = {
    "create", "bulk_create", "update", "bulk_update", "delete", "get_or_create",
    "update_or_create",
}  # fmt: skip
MAX_FUNCTION_LINES = 80


def project_modules() -> list[Path]:
    """Every Python file of the project, tests and migrations aside."""
    found = [ROOT / "manage.py"]
    for folder in (*APPS, "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            # Skip migrations, and what a benchmark run made in hidden folders (virtualenvs
            # such as bench/.venv-peers, the original project's export in bench/.original).
            if "migrations" not in path.parts and not any(
                part.startswith(".") for part in path.relative_to(ROOT).parts
            ):
                found.append(path)
    return found


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, dotted name) of every import, at any depth (lazy imports count too)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append((node.lineno, node.module))
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return names


def _roots_at_occurrence_manager(node: ast.AST) -> bool:
    """True for a call chain that starts at `Occurrence.objects` (filter(...).update(...))."""
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute):
            value = node.value
            if node.attr == "objects" and isinstance(value, ast.Name) and value.id == "Occurrence":
                return True
            node = value
        else:
            return False


def test_tasks_services_stays_under_600_lines() -> None:
    lines = len((ROOT / "tasks" / "services.py").read_text().splitlines())
    assert lines < 600, f"tasks/services.py has {lines} lines; split a concern out"


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in project_modules():
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{relative(path)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_only_the_queue_writes_occurrence_rows() -> None:
    writers = []
    for path in project_modules():
        if relative(path) == "tasks/queue.py":
            continue
        tree = parsed(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if _SQL_WRITE.search(node.value):
                    writers.append(f"{relative(path)}:{node.lineno} SQL writes tasks_occurrence")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _ORM_WRITES
                and _roots_at_occurrence_manager(node.func.value)
            ):
                writers.append(
                    f"{relative(path)}:{node.lineno} Occurrence.objects...{node.func.attr}"
                )
    assert not writers, "occurrence rows written outside tasks/queue.py:\n" + "\n".join(writers)


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("pipelines", "agents"),
        # The audit log is below every app: anything may record, it depends on none.
        ("audit/models.py", "agents"),
        ("audit/models.py", "tasks"),
        ("audit/models.py", "pipelines"),
        ("audit/services.py", "agents"),
        ("audit/services.py", "tasks"),
        ("audit/services.py", "pipelines"),
    ],
)
def test_forbidden_imports_stay_absent(folder: str, forbidden: str) -> None:
    target = ROOT / folder
    paths = [target] if target.is_file() else sorted(target.rglob("*.py"))
    found = [
        f"{relative(path)}:{line} imports {name}"
        for path in paths
        if "migrations" not in path.parts
        for line, name in imported_modules(parsed(path))
        if name == forbidden or name.startswith(f"{forbidden}.")
    ]
    assert not found, "\n".join(found)


def test_pipelines_uses_only_the_tasks_models() -> None:
    """pipelines/ sits below tasks/: it records Runs, and calls no tasks code (no circle)."""
    found = [
        f"{relative(path)}:{line} imports {name}"
        for path in sorted((ROOT / "pipelines").rglob("*.py"))
        if "migrations" not in path.parts
        for line, name in imported_modules(parsed(path))
        if name == "tasks" or (name.startswith("tasks.") and not name.startswith("tasks.models"))
    ]
    assert not found, "\n".join(found)


def test_no_import_error_fallbacks() -> None:
    fallbacks = []
    for path in project_modules():
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
                names = {c.id for c in caught if isinstance(c, ast.Name)}
                if names & {"ImportError", "ModuleNotFoundError"}:
                    fallbacks.append(f"{relative(path)}:{node.lineno}")
    assert not fallbacks, "except ImportError in project modules:\n" + "\n".join(fallbacks)


def test_settings_are_read_as_defined_without_fallback_defaults() -> None:
    fallbacks = []
    for path in project_modules():
        for node in ast.walk(parsed(path)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and node.args
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id == "settings"
            ):
                fallbacks.append(f"{relative(path)}:{node.lineno}")
    assert not fallbacks, "getattr(settings, ...) instead of settings.X:\n" + "\n".join(fallbacks)


def test_tasks_queue_never_shadows_the_standard_library_queue() -> None:
    shadowing = []
    for path in project_modules():
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ImportFrom) and node.module == "tasks":
                for alias in node.names:
                    if alias.name == "queue" and alias.asname in (None, "queue"):
                        shadowing.append(f"{relative(path)}:{node.lineno}")
    assert not shadowing, "`from tasks import queue` shadows stdlib queue:\n" + "\n".join(shadowing)


def test_architecture_doc_names_every_tasks_module() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    modules = [
        relative(path)
        for path in sorted((ROOT / "tasks").rglob("*.py"))
        if "migrations" not in path.parts and path.name != "__init__.py"
    ]
    missing = [module for module in modules if f"`{module}`" not in doc]
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"
