"""Validation of a task payload at creation: every problem, each with its JSON path.

Beyond the JSON Schema (`pipelines.schema`), a payload must have unique step names, valid
`${...}` templates and `if` expressions that reference only parameters that exist and steps
that run earlier, tools that exist (and that the agent's scopes allow), and `with` objects
that satisfy each tool's input schema wherever their values are not templates (a template's
value is known only when the step runs). With the agent's scopes, each `${secrets.NAME}`
needs `secrets:<name>` or `secrets:*`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

from ordinaut.errors import InvalidInput
from ordinaut.scopes import grants_secret, secret_scope
from pipelines.conditions import ConditionError, check_condition
from pipelines.schema import PAYLOAD_SCHEMA
from pipelines.templating import (
    CONTEXT_ROOTS,
    TemplateError,
    check_expression,
    expressions,
    has_template,
    secret_reference,
)
from pipelines.tools.base import json_path, schema_errors

ROOT = "payload"


class _Problems:
    """Problems in insertion order, grouped by path."""

    def __init__(self) -> None:
        self.by_path: dict[str, list[str]] = {}

    def add(self, path: str, reason: str) -> None:
        reasons = self.by_path.setdefault(path, [])
        if reason not in reasons:
            reasons.append(reason)

    def raise_if_any(self) -> None:
        if self.by_path:
            path, reasons = next(iter(self.by_path.items()))
            raise InvalidInput(f"{path}: {reasons[0]}", details=self.by_path)


def step_name(step: dict[str, Any], index: int) -> str:
    """A step's id, or the original's default `step_<index>`."""
    step_id = step.get("id")
    return step_id if isinstance(step_id, str) and step_id else f"step_{index}"


def validate_structure(payload: Any) -> dict:
    """The schema and unique-name checks only (no tools, no database); raises InvalidInput.

    The worker calls this for every run of a task whose payload rarely changes, so the
    verdict is cached by the payload's canonical JSON (a full schema walk costs far more).
    """
    try:
        text = json.dumps(payload, sort_keys=True)
    except (TypeError, ValueError):
        text = None  # not JSON data: validate it uncached (and it will be refused)
    problem = _structure_problem(text) if text is not None else _check_structure(payload)
    if problem is not None:
        raise InvalidInput(problem[0], details=dict(problem[1]))
    return payload


@functools.lru_cache(maxsize=1024)
def _structure_problem(text: str) -> tuple[str, dict] | None:
    return _check_structure(json.loads(text))


def _check_structure(payload: Any) -> tuple[str, dict] | None:
    """(message, details) of the first failing check, or None when the payload is sound."""
    problems = _Problems()
    try:
        _check_schema(payload, problems)
        problems.raise_if_any()
        _check_names(payload["pipeline"], problems)
        problems.raise_if_any()
    except InvalidInput as exc:
        return exc.message, exc.details
    return None


def validate_payload(payload: Any, *, scopes: list[str] | None = None) -> dict:
    """Validate a whole task payload; return it unchanged.

    Raises `InvalidInput` listing every problem: `details` maps a path such as
    `payload.pipeline[2].with.url` to its reasons, and the message is the first problem as
    "path: reason". With `scopes`, tools whose required scope they do not grant are refused.
    """
    problems = _Problems()
    _check_schema(payload, problems)
    if not isinstance(payload, dict) or not isinstance(payload.get("pipeline"), list):
        problems.raise_if_any()
        return payload
    pipeline = payload["pipeline"]
    params = payload.get("params") if isinstance(payload.get("params"), dict) else None
    names = _check_names(pipeline, problems)
    earlier: set[str] = set()
    for index, step in enumerate(pipeline):
        if not isinstance(step, dict):
            continue
        path = f"{ROOT}.pipeline[{index}]"
        if isinstance(step.get("if"), str):
            _check_condition(step["if"], f"{path}.if", earlier, names, params, problems)
        if isinstance(step.get("with"), dict):
            _check_templates(step["with"], f"{path}.with", earlier, names, params, problems, scopes)
        if isinstance(step.get("uses"), str) and step["uses"]:
            _check_tool(step, path, scopes, problems)
        earlier.add(step_name(step, index))
        if isinstance(step.get("save_as"), str):
            earlier.add(step["save_as"])
    if "output" in payload:
        _check_templates(
            payload["output"], f"{ROOT}.output", names, names, params, problems, scopes
        )
    problems.raise_if_any()
    return payload


def _check_schema(payload: Any, problems: _Problems) -> None:
    if not isinstance(payload, dict):
        problems.add(ROOT, "must be an object")
        return
    for parts, reason in schema_errors(PAYLOAD_SCHEMA, payload):
        problems.add(json_path(parts, ROOT), reason)


def _check_names(pipeline: list[Any], problems: _Problems) -> set[str]:
    """Step ids and save_as names must be unique together; return them all."""
    owners: dict[str, int] = {}
    for index, step in enumerate(pipeline):
        if not isinstance(step, dict):
            continue
        candidates = [("id", step_name(step, index))]
        save_as = step.get("save_as")
        if isinstance(save_as, str) and save_as != candidates[0][1]:
            candidates.append(("save_as", save_as))
        for field, name in candidates:
            if name in owners and owners[name] != index:
                problems.add(
                    f"{ROOT}.pipeline[{index}].{field}",
                    f"{name!r} is already used by pipeline[{owners[name]}]",
                )
            else:
                owners.setdefault(name, index)
    return set(owners)


def _check_condition(
    expression: str,
    path: str,
    earlier: set[str],
    names: set[str],
    params: dict | None,
    problems: _Problems,
) -> None:
    try:
        paths = check_condition(expression)
    except ConditionError as exc:
        problems.add(path, str(exc))
        return
    for reason in _reference_problems(paths, earlier, names, params):
        problems.add(path, reason)


def _check_templates(
    value: Any,
    path: str,
    earlier: set[str],
    names: set[str],
    params: dict | None,
    problems: _Problems,
    scopes: list[str] | None,
) -> None:
    for leaf_path, text in _strings(value, path):
        for expression in expressions(text):
            secret = secret_reference(expression)
            if secret is not None and scopes is not None and not grants_secret(scopes, secret):
                problems.add(
                    leaf_path,
                    f"${{{expression}}}: secret {secret!r} needs scope "
                    f"{secret_scope(secret)!r} (or 'secrets:*')",
                )
            try:
                paths = check_expression(expression)
            except TemplateError as exc:
                problems.add(leaf_path, str(exc))
                continue
            for reason in _reference_problems(paths, earlier, names, params):
                problems.add(leaf_path, f"${{{expression}}}: {reason}")


def _reference_problems(
    paths: list[list[str | int]], earlier: set[str], names: set[str], params: dict | None
) -> Iterator[str]:
    for parts in paths:
        root = parts[0] if parts else None
        if not isinstance(root, str) or root not in CONTEXT_ROOTS:
            yield f"unknown reference {root!r} (use one of: {', '.join(CONTEXT_ROOTS)})"
            continue
        name = parts[1] if len(parts) > 1 else None
        if root == "steps" and isinstance(name, str) and name not in earlier:
            if name in names:
                yield f"step {name!r} has not run yet at this point"
            else:
                yield f"unknown step {name!r}"
        if root == "params" and params is not None and isinstance(name, str) and name not in params:
            yield f"unknown parameter {name!r}"


def _check_tool(
    step: dict[str, Any], path: str, scopes: list[str] | None, problems: _Problems
) -> None:
    from pipelines.registry import UnknownTool, get_tool

    try:
        # Never start an MCP server to validate a request (this runs in the web process).
        tool = get_tool(step["uses"], spawn=False)
    except UnknownTool as exc:
        problems.add(f"{path}.uses", exc.message)
        return
    if scopes is not None and not tool.granted_by(scopes):
        problems.add(f"{path}.uses", f"{tool.name} needs scope {tool.scope_hint()}")
    arguments = step.get("with", {})
    if not isinstance(arguments, dict):
        return
    for parts, reason in schema_errors(tool.input_schema, arguments):
        if reason != "unknown field" and _templated(arguments, parts):
            continue
        problems.add(json_path(parts, f"{path}.with"), reason)


def _templated(value: Any, parts: list[str | int]) -> bool:
    """True when the value at `parts`, or any container on the way, is a template."""
    current = value
    for part in [None, *parts]:
        if part is not None:
            try:
                current = current[part]
            except (KeyError, IndexError, TypeError):
                return False
        if isinstance(current, str) and has_template(current):
            return True
    return False


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
