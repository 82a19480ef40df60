"""Where the target field's schema asks for a string, the original's type tests pass as written.

The original rendered every template as text. We keep a whole-string template's type, except
where the tool's input schema asks for a string: there the value is written as the original
wrote it. Here the original's own data-type tests run through a tool schema whose every field
is a string, and pass unchanged.
"""

from __future__ import annotations

import functools

import pytest

from tests.compat import template_adapter
from tests.compat.original import test_template_rendering as original

ALL_STRINGS = template_adapter.ALL_STRINGS


@pytest.mark.parametrize(
    "name",
    [
        "test_boolean_serialization",
        "test_number_serialization",
        "test_complex_object_serialization",
        "test_array_serialization",
    ],
)
def test_the_original_type_tests_pass_for_string_fields(monkeypatch, name):
    to_text = functools.partial(template_adapter.render_templates, schema=ALL_STRINGS)
    monkeypatch.setattr(original, "render_templates", to_text)
    getattr(original.TestDataTypeHandling(), name)()


def test_without_the_schema_the_same_template_keeps_its_type():
    rendered = template_adapter.render_templates(
        {"temp": "${steps.weather.temp}"}, {"steps": {"weather": {"temp": 25.5}}}
    )
    assert rendered == {"temp": 25.5}
