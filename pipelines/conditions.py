"""A step's `if`: a JMESPath expression over the run context (pure).

The original wrote conditions both bare (`steps.weather.temp > \\`25\\``) and wrapped
(`${steps.approval.status == 'approved'}`); both are accepted. Falsy is Python's notion,
as in the original: false, null, 0, "", [] and {} skip the step.
"""

from __future__ import annotations

from typing import Any

from jmespath.exceptions import JMESPathError

from pipelines.templating import TEMPLATE_RE, TemplateError, compile_expression, root_paths


class ConditionError(Exception):
    """The condition is not a valid JMESPath expression, or failed to evaluate."""


def unwrap(expression: str) -> str:
    """The JMESPath text of a condition (drops one `${...}` wrapper)."""
    expression = expression.strip()
    whole = TEMPLATE_RE.fullmatch(expression)
    return whole.group(1).strip() if whole else expression


def check_condition(expression: str) -> list[list[str | int]]:
    """Parse a condition; return the context paths it reads. Raises ConditionError."""
    text = unwrap(expression)
    if not text:
        raise ConditionError("empty condition")
    try:
        return root_paths(compile_expression(text))
    except TemplateError as exc:
        raise ConditionError(str(exc)) from exc


def evaluate_condition(expression: str, data: dict[str, Any]) -> bool:
    """True when the condition holds for `data`; raises ConditionError."""
    text = unwrap(expression)
    try:
        result = compile_expression(text).search(data)
    except (TemplateError, JMESPathError) as exc:
        raise ConditionError(f"condition {expression!r}: {exc}") from exc
    return bool(result)
