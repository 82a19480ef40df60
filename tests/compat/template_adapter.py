"""The original Ordinaut's `engine.template` interface, built on our templating.

The original project's own unit tests (tests/compat/original/) import these names instead of
`engine.template`, so they run unchanged against our code. Nothing here re-implements the
original: each function is the thinnest mapping onto pipelines.templating, so a test that fails
shows a real difference, which docs/compat.md must list.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipelines.templating import TemplateContext, TemplateError, evaluate, expressions, render


class TemplateRenderError(Exception):
    """The original's error type; raised from our TemplateError, whose message it keeps."""


def _context(ctx: dict[str, Any]) -> TemplateContext:
    # The original read `now` from the context like any other key; ours is the run's instant.
    now = ctx.get("now")
    instant = datetime.fromisoformat(now) if isinstance(now, str) else datetime.now(UTC)
    return TemplateContext(data=ctx, now=instant)


# A schema under which every field, at any depth, is a string: what a tool whose inputs are all
# text declares (tests/compat/test_string_fields.py renders the original's tests through it).
ALL_STRINGS: dict[str, Any] = {
    "type": "string",
    "additionalProperties": {"$ref": "#"},
    "items": {"$ref": "#"},
}


def render_templates(obj: Any, ctx: dict[str, Any], schema: dict[str, Any] | None = None) -> Any:
    try:
        return render(obj, _context(ctx), schema)
    except TemplateError as exc:
        raise TemplateRenderError(str(exc)) from exc


def extract_template_variables(obj: Any) -> list[str]:
    return sorted(set(expressions(obj)))


def validate_template_variables(variables: Any, context: dict[str, Any]) -> list[str]:
    names = variables if isinstance(variables, list) else extract_template_variables(variables)
    missing = []
    for name in names:
        try:
            evaluate(name, _context(context))
        except TemplateError:
            missing.append(name)
    return missing
