"""Templating and conditions: pure functions, no database."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from pipelines.conditions import ConditionError, check_condition, evaluate_condition
from pipelines.secrets import REDACTED, redact
from pipelines.templating import TemplateContext, TemplateError, check_expression, render

NOW = datetime(2026, 3, 28, 9, 30, tzinfo=ZoneInfo("Europe/Chisinau"))


def context(**data) -> TemplateContext:
    base = {
        "params": {"city": "Chisinau", "limit": 3},
        "steps": {"weather": {"temp": 25, "tags": ["sun", "wind"]}, "skipped": None},
        "run": {"id": "r-1", "attempt": 2},
        "task": {"id": "t-1"},
        "event": None,
        "now": NOW.isoformat(timespec="seconds"),
    }
    base.update(data)
    secrets = {"API_TOKEN": "tok-123456"}
    return TemplateContext(data=base, now=NOW, secret=secrets.get)


def test_whole_template_keeps_the_value_type():
    ctx = context()
    assert render("${steps.weather}", ctx) == {"temp": 25, "tags": ["sun", "wind"]}
    assert render("${params.limit}", ctx) == 3
    assert render({"a": ["${steps.weather.tags[1]}"]}, ctx) == {"a": ["wind"]}


def test_embedded_templates_are_stringified():
    ctx = context()
    assert render("${params.city}: ${steps.weather.temp}C", ctx) == "Chisinau: 25C"
    assert render("tags=${steps.weather.tags}", ctx) == 'tags=["sun", "wind"]'
    assert render("skipped=${steps.skipped}", ctx) == "skipped=null"


def test_now_and_offsets_are_iso_in_the_task_zone():
    ctx = context()
    assert render("${now}", ctx) == "2026-03-28T09:30:00+02:00"
    # 24 hours later crosses the spring-forward night: same instant + 24h, new offset.
    assert render("${now+24h}", ctx) == "2026-03-29T10:30:00+03:00"
    assert render("${now-15m}", ctx) == "2026-03-28T09:15:00+02:00"
    # A calendar day keeps the wall time.
    assert render("${now+1d}", ctx) == "2026-03-29T09:30:00+03:00"


def test_jmespath_expressions_work_as_in_the_original():
    assert render("${steps.weather.temp > `20`}", context()) is True
    assert render("${length(steps.weather.tags)}", context()) == 2


def test_secret_is_resolved_and_remembered_for_redaction():
    ctx = context()
    assert render("Bearer ${secrets.API_TOKEN}", ctx) == "Bearer tok-123456"
    assert ctx.revealed == {"tok-123456"}
    assert redact({"h": "Bearer tok-123456"}, ctx.revealed) == {"h": f"Bearer {REDACTED}"}


def test_unknown_secret_names_it():
    with pytest.raises(TemplateError, match="unknown secret 'NOPE'"):
        render("${secrets.NOPE}", context())


def test_unknown_step_names_it():
    with pytest.raises(TemplateError, match=r"\$\{steps.wether.temp\}: unknown step 'wether'"):
        render("${steps.wether.temp}", context())


def test_unknown_parameter_names_it():
    with pytest.raises(TemplateError, match="unknown parameter 'town'"):
        render("${params.town}", context())


def test_missing_field_lists_the_fields_that_exist():
    with pytest.raises(
        TemplateError, match=r"steps.weather has no field 'tmp' \(fields: tags, temp\)"
    ):
        render("${steps.weather.tmp}", context())


def test_index_out_of_range_names_it():
    with pytest.raises(TemplateError, match=r"index \[5\] is out of range for steps.weather.tags"):
        render("${steps.weather.tags[5]}", context())


def test_unknown_root_names_it():
    with pytest.raises(TemplateError, match="unknown reference 'paramz'"):
        render("${paramz.city}", context())


def test_a_skipped_step_reads_as_null():
    assert render("${steps.skipped.anything}", context()) is None


def test_invalid_expression_is_reported():
    with pytest.raises(TemplateError, match="invalid expression"):
        render("${steps.[}", context())


def test_double_dollar_escapes_a_template():
    assert render("cost: $${params.city}", context()) == "cost: ${params.city}"


def test_check_expression_returns_the_paths_read():
    assert check_expression("steps.weather.tags[0]") == [["steps", "weather", "tags", 0]]
    assert check_expression("now+1d") == []
    assert check_expression("steps.a.x > params.b") == [["steps", "a", "x"], ["params", "b"]]


def test_condition_bare_and_wrapped():
    data = context().data
    assert evaluate_condition("steps.weather.temp > `20`", data) is True
    assert evaluate_condition("${steps.weather.temp > `30`}", data) is False
    assert evaluate_condition("steps.skipped", data) is False


def test_invalid_condition_raises():
    with pytest.raises(ConditionError):
        check_condition("steps.weather.temp >")


# -- a whole-string template fills the field it is in by that field's schema ---------------------

STRING_FIELDS = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "maybe": {"type": ["string", "null"]},
        "count": {"type": "integer"},
        "ref": {"$ref": "#/$defs/Label"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "pair": {"type": "array", "prefixItems": [{"type": "string"}, {}]},
    },
    "additionalProperties": {"type": "string"},
    "$defs": {"Label": {"type": "string"}},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${steps.weather.temp}", "25"),
        ("${steps.weather.temp > `20`}", "true"),
        ("${steps.weather.tags}", '["sun", "wind"]'),
        ("${steps.weather}", '{"temp": 25, "tags": ["sun", "wind"]}'),
        ("${steps.skipped}", "null"),
        ("${params.city}", "Chisinau"),
    ],
)
def test_a_string_field_gets_the_value_as_the_original_wrote_it(template, expected):
    assert render({"text": template}, context(), STRING_FIELDS) == {"text": expected}


def test_the_value_keeps_its_type_where_the_schema_takes_it():
    rendered = render(
        {"count": "${params.limit}", "maybe": "${steps.skipped}", "free": "${steps.weather.temp}"},
        context(),
        {**STRING_FIELDS, "additionalProperties": {}},
    )
    assert rendered == {"count": 3, "maybe": None, "free": 25}


def test_refs_items_prefix_items_and_additional_properties_are_followed():
    rendered = render(
        {
            "ref": "${params.limit}",
            "tags": ["${params.limit}", "${steps.weather.temp}"],
            "pair": ["${params.limit}", "${params.limit}"],
            "other": "${steps.weather.temp}",
        },
        context(),
        STRING_FIELDS,
    )
    assert rendered == {"ref": "3", "tags": ["3", "25"], "pair": ["3", 3], "other": "25"}


def test_an_optional_string_written_as_any_of_is_a_string_field():
    # What pydantic (and so most Python MCP servers) publishes for `str | None`.
    optional = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    schema = {"properties": {"note": optional, "any": {"anyOf": [{"type": "string"}, {}]}}}
    rendered = render({"note": "${params.limit}", "any": "${params.limit}"}, context(), schema)
    assert rendered == {"note": "3", "any": 3}
    assert render({"note": "${steps.skipped}"}, context(), schema) == {"note": None}


def test_below_a_field_the_schema_does_not_describe_nothing_is_converted():
    # `free` is not in STRING_FIELDS' properties: its own members must not be matched
    # against the root's `text`.
    schema = {**STRING_FIELDS, "additionalProperties": False}
    rendered = render({"free": {"text": "${params.limit}"}}, context(), schema)
    assert rendered == {"free": {"text": 3}}


def test_without_a_schema_a_whole_template_keeps_its_type():
    assert render({"text": "${params.limit}"}, context()) == {"text": 3}
    assert render({"text": "${params.limit}"}, context(), {"$ref": "http://x/s.json"}) == {
        "text": 3
    }


def test_an_escaped_template_in_a_rendered_value_is_left_as_it_is():
    ctx = context(params={"note": "price $${amount}"})
    assert render("note: ${params.note}", ctx) == "note: price $${amount}"
    assert render("$${params.note} and ${params.note}", ctx) == (
        "${params.note} and price $${amount}"
    )


@pytest.mark.parametrize(
    ("expression", "reason"),
    [("steps.[", "incomplete expression"), ("a..b", 'Parse error at column 2, token "." (DOT)')],
)
def test_an_invalid_expression_error_ends_with_the_reason(expression, reason):
    with pytest.raises(TemplateError) as caught:
        render("${" + expression + "}", context())
    assert str(caught.value).startswith(f"invalid expression {expression!r}: ")
    assert str(caught.value).endswith(reason)
