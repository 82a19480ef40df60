"""`${...}` templates in step inputs and pipeline outputs (pure: values in, values out).

An expression is one of:

- `now`, `now+24h`, `now-15m` (units s, m, h, d, w): an ISO 8601 instant in the task's zone
  (s, m, h are elapsed time; d, w are calendar days at the same wall time);
- `secrets.NAME`: a secret, resolved by the caller's lookup and remembered for redaction;
- anything else: a JMESPath expression over the run context `{params, steps, run, task, event,
  now}`, as in the original Ordinaut (`${steps.weather.temp > \\`20\\`}` works).

A string that is exactly one template keeps the value's type (an object stays an object),
unless the schema of the field it fills asks for a string the value is not: then it is
stringified as the original Ordinaut did, so `{"text": "${steps.weather.temp}"}` sends `"25.5"`
to a tool whose `text` is a string. Templates embedded in longer text are stringified (JSON for
objects, `true`/`null` for booleans and null). `$${` writes a literal `${`. A plain path such
as `steps.weather.temp` is resolved strictly: a missing key is an error naming it, because a
typo that silently renders `null` would send wrong data to a tool.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

# The roots a template or condition may read (besides the specials `now±` and `secrets`).
CONTEXT_ROOTS = ("params", "steps", "run", "task", "event", "now")

TEMPLATE_RE = re.compile(r"(?<!\$)\$\{([^{}]*)\}")
# One pass over the text: an escaped `$${` or a template. Replacing both in one pass means a
# rendered value that happens to contain `$${` is left as it is.
_TOKEN_RE = re.compile(r"\$\$\{|\$\{([^{}]*)\}")
_NOW_OFFSET_RE = re.compile(r"^now\s*([+-])\s*(\d+(?:\.\d+)?)\s*([smhdw])$")
_SECRET_RE = re.compile(r"^secrets\.([A-Za-z_][A-Za-z0-9_]*)$")


def secret_reference(expression: str) -> str | None:
    """The NAME of an expression `secrets.NAME`, else None."""
    match = _SECRET_RE.match(expression.strip())
    return match.group(1) if match else None


_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_MISSING = object()


class TemplateError(Exception):
    """A template could not be rendered; the message names the expression and the reason."""


@dataclass
class TemplateContext:
    """What templates may read.

    `data` holds `params, steps, run, task, event, now` (JSON values; `now` an ISO string);
    `now` is the same instant as an aware datetime for `${now+24h}` arithmetic; `secret`
    looks a secret up by name (None when unknown); every secret value rendered is added
    to `revealed` so the caller can redact it from whatever it stores or logs.
    """

    data: dict[str, Any]
    now: datetime
    secret: Callable[[str], str | None] | None = None
    revealed: set[str] = field(default_factory=set)


def render(value: Any, context: TemplateContext, schema: Any = None) -> Any:
    """Render every template in `value` (nested dicts and lists included).

    `schema` is the JSON Schema `value` must meet (a tool's input schema), if known: it decides
    where a whole-string template's value becomes text (see the module docstring). Raises
    TemplateError naming the first expression that fails. `value` is not modified.
    """
    root = schema if isinstance(schema, dict) else {}
    return _render(value, context, _Schemas(root), root)


def _render(value: Any, context: TemplateContext, schemas: _Schemas, at: Any) -> Any:
    """Render `value`, whose schema is `at` (None where no schema is known)."""
    if isinstance(value, dict):
        return {
            key: _render(item, context, schemas, schemas.member(at, key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _render(item, context, schemas, schemas.item(at, index))
            for index, item in enumerate(value)
        ]
    if isinstance(value, str):
        rendered = _render_string(value, context)
        if not isinstance(rendered, str) and schemas.wants_text(at, rendered):
            return stringify(rendered)
        return rendered
    return value


def expressions(value: Any) -> Iterator[str]:
    """Yield the expression inside every `${...}` in `value`, depth first, in order."""
    if isinstance(value, dict):
        for item in value.values():
            yield from expressions(item)
    elif isinstance(value, list):
        for item in value:
            yield from expressions(item)
    elif isinstance(value, str):
        for match in TEMPLATE_RE.finditer(value):
            yield match.group(1).strip()


def has_template(value: Any) -> bool:
    """True when `value` (or anything inside it) contains a `${...}` template."""
    return next(expressions(value), None) is not None


def check_expression(expression: str) -> list[list[str | int]]:
    """Parse an expression without evaluating it; return the context paths it reads.

    Special expressions (`now±`, `secrets.X`) read nothing and return []. Raises
    TemplateError for an empty or unparsable expression.
    """
    if not expression:
        raise TemplateError("empty template ${}")
    if expression == "now" or _NOW_OFFSET_RE.match(expression) or _SECRET_RE.match(expression):
        return []
    if expression.startswith("secrets"):
        raise TemplateError(f"${{{expression}}}: a secret is written ${{secrets.NAME}}")
    return root_paths(compile_expression(expression))


@lru_cache(maxsize=4096)
def compile_expression(expression: str) -> Any:
    """Compile a JMESPath expression once; raise TemplateError when it is invalid."""
    try:
        return jmespath.compile(expression)
    except JMESPathError as exc:
        # jmespath's first line ends by announcing the expression it prints on the next lines;
        # the expression is already named here, so the dangling announcement goes.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = re.sub(r",? for expression:$", "", reason)
        if reason.endswith("Incomplete expression:"):
            reason = "incomplete expression"
        raise TemplateError(f"invalid expression {expression!r}: {reason}") from exc


def root_paths(compiled: Any) -> list[list[str | int]]:
    """The leading field paths an expression reads from the root of the context."""
    return _roots(compiled.parsed)


def evaluate(expression: str, context: TemplateContext) -> Any:
    """The value of one expression (the text inside `${...}`)."""
    expression = expression.strip()
    if not expression:
        raise TemplateError("empty template ${}")
    if expression == "now":
        return context.now.isoformat(timespec="seconds")
    offset = _NOW_OFFSET_RE.match(expression)
    if offset:
        sign, amount, unit = offset.groups()
        delta = timedelta(**{_UNITS[unit]: float(amount)})
        if sign == "-":
            delta = -delta
        zone = context.now.tzinfo
        if unit in "dw":
            # Days are calendar days: the same wall time (normalised if it falls in a gap).
            instant = (context.now + delta).astimezone(UTC).astimezone(zone)
        else:
            # Seconds, minutes and hours are elapsed time, whatever the clocks do.
            instant = (context.now.astimezone(UTC) + delta).astimezone(zone)
        return instant.isoformat(timespec="seconds")
    name = secret_reference(expression)
    if name is not None:
        found = context.secret(name) if context.secret else None
        if found is None:
            raise TemplateError(f"${{{expression}}}: unknown secret {name!r}")
        if found:
            context.revealed.add(found)
        return found
    compiled = compile_expression(expression)
    chain = _chain(compiled.parsed)
    if chain is not None:
        return _resolve_strictly(expression, chain, context.data)
    try:
        return compiled.search(context.data)
    except JMESPathError as exc:
        raise TemplateError(f"${{{expression}}}: {exc}") from exc


def stringify(value: Any) -> str:
    """How a value reads when embedded in text (the original's rules)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _render_string(text: str, context: TemplateContext) -> Any:
    if "${" not in text:
        return text
    whole = TEMPLATE_RE.fullmatch(text)
    if whole:
        return evaluate(whole.group(1), context)

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        return stringify(evaluate(match.group(1), context))

    return _TOKEN_RE.sub(replace, text)


# JSON Schema type names of the values a template yields.
_JSON_TYPES: tuple[tuple[type, tuple[str, ...]], ...] = (
    (bool, ("boolean",)),
    (int, ("integer", "number")),
    (float, ("number",)),
    (str, ("string",)),
    (list, ("array",)),
    (dict, ("object",)),
)
_MAX_REF_HOPS = 16


@dataclass(frozen=True)
class _Schemas:
    """Walks a JSON Schema alongside the value being rendered (local `$ref`s followed)."""

    root: dict[str, Any]

    def resolve(self, schema: Any) -> dict[str, Any] | None:
        for _ in range(_MAX_REF_HOPS):
            if not isinstance(schema, dict):
                return None
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                return schema
            schema = self._pointer(ref)
        return None

    def member(self, at: Any, key: str) -> Any:
        schema = self.resolve(at)
        if schema is None:
            return None
        properties = schema.get("properties")
        if isinstance(properties, dict) and key in properties:
            return properties[key]
        extra = schema.get("additionalProperties")
        return extra if isinstance(extra, dict) else None

    def item(self, at: Any, index: int) -> Any:
        schema = self.resolve(at)
        if schema is None:
            return None
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            if index < len(prefix):
                return prefix[index]
            return schema.get("items") if isinstance(schema.get("items"), dict) else None
        items = schema.get("items")
        if isinstance(items, list):  # draft-04..2019 tuple form
            return items[index] if index < len(items) else None
        return items if isinstance(items, dict) else None

    def wants_text(self, at: Any, value: Any) -> bool:
        """True when the schema at `at` takes a string but not `value` as it is."""
        types = self._types(at, depth=0)
        if types is None or "string" not in types:
            return False
        return not types.intersection(_json_types(value))

    def _types(self, at: Any, depth: int) -> set[str] | None:
        """The JSON types the schema at `at` admits; None when it does not limit them.

        `anyOf`/`oneOf` admit the union of their branches: pydantic writes an optional string
        as `anyOf: [{type: string}, {type: null}]`, which MCP servers publish as is.
        """
        schema = self.resolve(at)
        if schema is None or depth > _MAX_REF_HOPS:
            return None
        declared = schema.get("type")
        if declared is not None:
            return {declared} if isinstance(declared, str) else set(declared)
        branches = schema.get("anyOf") or schema.get("oneOf")
        if not isinstance(branches, list) or not branches:
            return None
        union: set[str] = set()
        for branch in branches:
            types = self._types(branch, depth + 1)
            if types is None:
                return None  # one branch takes anything, so the value fits as it is
            union |= types
        return union

    def _pointer(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return None  # a remote schema: not followed, so no conversion is guessed
        current: Any = self.root
        for part in ref[1:].split("/")[1:]:  # "#" alone is the root
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(current, dict) or part not in current:
                return None
            current = current[part]
        return current


def _json_types(value: Any) -> tuple[str, ...]:
    if value is None:
        return ("null",)
    for python_type, names in _JSON_TYPES:
        if isinstance(value, python_type):
            if python_type is float and value.is_integer():
                return ("number", "integer")
            return names
    return ()


def _resolve_strictly(expression: str, chain: list[str | int], data: Any) -> Any:
    """Walk a plain path; a missing key or index is an error naming where it stopped."""
    current = data
    walked: list[str] = []
    for part in chain:
        if current is None and walked:
            # A skipped step or a null field: the rest of the path is null, as in JMESPath.
            return None
        if isinstance(part, int):
            if not isinstance(current, list) or not -len(current) <= part < len(current):
                size = len(current) if isinstance(current, list) else "not a list"
                raise TemplateError(
                    f"${{{expression}}}: index [{part}] is out of range for "
                    f"{_dotted(walked)} ({size})"
                )
            current = current[part]
            walked.append(f"[{part}]")
            continue
        value = current.get(part, _MISSING) if isinstance(current, dict) else _MISSING
        if value is _MISSING:
            raise TemplateError(f"${{{expression}}}: {_missing_reason(walked, part, current)}")
        current = value
        walked.append(part)
    return current


def _missing_reason(walked: list[str], part: str, current: Any) -> str:
    if not walked:
        return f"unknown reference {part!r} (use one of: {', '.join(CONTEXT_ROOTS)})"
    where = _dotted(walked)
    if walked == ["steps"]:
        return f"unknown step {part!r}: no earlier step has that id or save_as"
    if walked == ["params"]:
        return f"unknown parameter {part!r}"
    if isinstance(current, dict):
        known = ", ".join(sorted(map(str, current))[:20]) or "none"
        return f"{where} has no field {part!r} (fields: {known})"
    return f"{where} is {type(current).__name__ if current is not None else 'null'}, not an object"


def _dotted(walked: list[str]) -> str:
    return "".join(part if part.startswith("[") else f".{part}" for part in walked).lstrip(".")


def _chain(node: dict) -> list[str | int] | None:
    """The path of an AST made only of fields and integer indexes, else None."""
    kind = node["type"]
    if kind == "field":
        return [node["value"]]
    if kind == "subexpression":
        parts: list[str | int] = []
        for child in node["children"]:
            sub = _chain(child)
            if sub is None:
                return None
            parts.extend(sub)
        return parts
    if kind == "index_expression":
        base = _chain(node["children"][0])
        if base is None:
            return None
        for child in node["children"][1:]:
            if child["type"] != "index":
                return None
            base.append(child["value"])
        return base
    return None


def _roots(node: dict) -> list[list[str | int]]:
    """Leading paths read from the context root (right sides of projections are relative)."""
    chain = _chain(node)
    if chain is not None:
        return [chain]
    kind = node["type"]
    children = node.get("children", [])
    if kind == "subexpression":
        prefix: list[str | int] = []
        for child in children:
            sub = _chain(child)
            if sub is None:
                break
            prefix.extend(sub)
        return [prefix] if prefix else _roots(children[0])
    if kind in ("projection", "value_projection", "filter_projection", "flatten", "pipe"):
        return _roots(children[0]) if children else []
    if kind == "index_expression":
        return _roots(children[0])
    if kind in ("comparator", "and_expression", "or_expression", "not_expression"):
        return [path for child in children for path in _roots(child)]
    if kind == "function_expression":
        return [path for child in children if child["type"] != "expref" for path in _roots(child)]
    if kind in ("multi_select_list", "multi_select_dict", "key_val_pair"):
        return [path for child in children for path in _roots(child)]
    return []
