"""What a tool is: a name, input and output JSON Schemas, a callable, a timeout, a scope."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

if TYPE_CHECKING:
    from tasks.models import Run, Task

ANY_OBJECT: dict[str, Any] = {"type": "object"}


class ToolError(Exception):
    """A tool call failed. `retryable` is False when repeating the call cannot help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class ToolTimeout(ToolError):
    """The call did not finish within its timeout."""


@dataclass(frozen=True)
class ApprovalRequest:
    """The decision a parked step waits for."""

    step_id: str
    prompt: str
    context: Any
    approvers: list[str]
    expires_in_seconds: float | None  # None: the installation's default


@dataclass
class ToolWaiting:
    """Returned by a tool that parks the run until something outside decides (approvals).

    The executor records the step as `waiting` with `output`, stops, and reports the run
    as waiting; a later attempt of the same occurrence resumes at this step.
    """

    output: dict[str, Any]
    approval: ApprovalRequest | None = None


@dataclass
class ToolContext:
    """What a tool may know about the call: the step, its run and task, and the time left."""

    step_id: str
    timeout: float
    run: Run | None = None
    task: Task | None = None
    # The task's agent (an agents.models.Agent: pipelines does not import agents/).
    agent: Any = None
    correlation_id: str = ""
    # The previous attempt's record of this step, when a waiting step is resumed.
    resumed: dict[str, Any] | None = None
    # The `${secrets.*}` values rendered so far: a tool must not carry them anywhere their
    # owner did not send them (http.request drops such headers on a cross-origin redirect).
    secrets: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ToolSpec:
    """A tool in the registry. `call` runs it; schemas are checked by `check_input/output`."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    required_scope: str | None
    timeout_seconds: float
    func: Callable[[dict[str, Any], ToolContext], Any] = field(repr=False, compare=False)
    # "builtin", or "mcp:<server>" for tools discovered on an MCP server.
    source: str = "builtin"
    # A scope granting this one tool besides `required_scope` (MCP: `mcp:<server>:<tool>`,
    # so a read-only tool can be granted without the server's other tools).
    tool_scope: str | None = None
    # Pure: no I/O, no sleeping, bounded CPU on bounded input. A pipeline of such tools
    # alone runs on the worker's main thread (pipelines.executor.inline_safe).
    inline: bool = False

    def granted_by(self, scopes: Iterable[str]) -> bool:
        """True when an agent holding `scopes` may call this tool."""
        from ordinaut.scopes import grants

        held = set(scopes)
        return grants(held, self.required_scope) or (
            self.tool_scope is not None and self.tool_scope in held
        )

    def scope_hint(self) -> str:
        """The scope(s) that grant it, for an error message."""
        if self.tool_scope is None:
            return repr(self.required_scope)
        return f"{self.required_scope!r} or {self.tool_scope!r}"

    def call(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Run the tool; raises ToolError (or anything a buggy tool raises)."""
        return self.func(arguments, context)

    def check_input(self, arguments: Any) -> None:
        """Raise ToolError (not retryable) when `arguments` violate the input schema."""
        problems = schema_problems(self.input_schema, arguments)
        if problems:
            raise ToolError(f"input does not match {self.name}: {problems[0]}", retryable=False)

    def check_output(self, output: Any) -> None:
        """Raise ToolError (not retryable) when `output` violates the output schema."""
        if self.output_schema is None:
            return
        problems = schema_problems(self.output_schema, output)
        if problems:
            raise ToolError(f"output does not match {self.name}: {problems[0]}", retryable=False)

    def describe(self) -> dict[str, Any]:
        """The JSON the API serves at /tools."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "required_scope": self.required_scope,
            "tool_scope": self.tool_scope,
            "timeout_seconds": self.timeout_seconds,
            "source": self.source,
        }


def schema_problems(schema: dict[str, Any], value: Any) -> list[str]:
    """Every violation of `schema` by `value`, as 'path: reason' (or just the reason)."""
    return [
        f"{json_path(parts)}: {reason}" if parts else reason
        for parts, reason in schema_errors(schema, value)
    ]


def schema_errors(schema: dict[str, Any], value: Any) -> list[tuple[list[str | int], str]]:
    """Every violation as (path to the offending field, reason), in document order."""
    if schema is ANY_OBJECT or schema == ANY_OBJECT:
        # The most common schema (debug.echo's both ways, most MCP tools' input): a type
        # test, with the reason the full check gives, at a fraction of its cost.
        return [] if isinstance(value, dict) else [([], "must be of type object")]
    validator = _validator_for(schema)
    if validator is None:
        return [([], "the tool's own schema is invalid")]
    found: list[tuple[list[str | int], str]] = []
    for error in validator.iter_errors(value):
        found.extend(locate_error(error))
    return sorted(found, key=lambda item: [str(part) for part in item[0]])


def locate_error(error: Any) -> list[tuple[list[str | int], str]]:
    """(path, reason) pairs for one jsonschema error; `required` points at the missing key."""
    parts = list(error.absolute_path)
    kind = error.validator
    if kind == "required":
        # One error per missing property; its message starts with that property's repr.
        names = [n for n in error.validator_value if error.message.startswith(repr(n))]
        return [([*parts, names[0]], "required")] if names else [(parts, error.message)]
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = [key for key in error.instance if key not in allowed]
        return [([*parts, key], "unknown field") for key in extra] or [(parts, error.message)]
    if kind == "type":
        expected = error.validator_value
        names = " or ".join(expected) if isinstance(expected, list) else expected
        return [(parts, f"must be of type {names}")]
    if kind == "enum":
        choices = ", ".join(json.dumps(value) for value in error.validator_value)
        return [(parts, f"must be one of {choices}")]
    if kind == "const":
        return [(parts, f"must be {json.dumps(error.validator_value)}")]
    return [(parts, error.message)]


def json_path(parts: Any, prefix: str = "") -> str:
    """`a.b[2].c` from a sequence of keys and indexes (appended to `prefix`)."""
    text = prefix
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# Schemas are module constants or belong to a registered tool and are never changed in place,
# so the validator is found by the schema object itself; serializing it to look it up by
# content cost a fifth of every check. The entry keeps the schema alive, so its id cannot be
# reused while cached.
_by_identity: dict[int, tuple[dict[str, Any], Draft202012Validator | None]] = {}


def _validator_for(schema: dict[str, Any]) -> Draft202012Validator | None:
    entry = _by_identity.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    validator = _validator(json.dumps(schema, sort_keys=True))
    if len(_by_identity) >= 1024:
        _by_identity.clear()
    _by_identity[id(schema)] = (schema, validator)
    return validator


@lru_cache(maxsize=1024)
def _validator(schema_json: str) -> Draft202012Validator | None:
    schema = json.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        return None
    return Draft202012Validator(schema)
