"""Runs the original's template tests against our code; see the vendored file's header."""

from __future__ import annotations

import math

import pytest


@pytest.fixture
def performance_benchmarks() -> dict:
    # The original's performance tests also time themselves against limits from its own
    # conftest. We never pass or fail a test on wall-clock speed on a shared machine, so the
    # limits are unbounded: those tests still run and still check what they rendered.
    unbounded = math.inf
    return {
        "template_rendering": {
            "simple_substitution_max_ms": unbounded,
            "complex_nested_max_ms": unbounded,
            "large_payload_max_ms": unbounded,
        }
    }


# Each test of the original that fails against our templating, and the line of docs/compat.md
# ("Templates") that says why. Strict: a test listed here that starts passing fails, so this
# list and the page cannot drift from the code.
_DIFFERENCES = {
    "TestBasicTemplateRendering::test_now_builtin_variable": "${now} is the run's instant "
    "in the task's zone with its offset (+00:00), not the context's `now` text ('Z')",
    "TestComplexTemplateStructures::test_array_with_templates": "${now}: as above",
    "TestDataTypeHandling::test_boolean_serialization": "a whole-string template keeps the "
    "value's type unless the tool's schema asks for a string",
    "TestDataTypeHandling::test_number_serialization": "a whole-string template keeps its type",
    "TestDataTypeHandling::test_complex_object_serialization": "a whole-string template keeps "
    "its type",
    "TestDataTypeHandling::test_array_serialization": "a whole-string template keeps its type",
    "TestDataTypeHandling::test_null_values": "a missing path is an error, not 'null'",
    "TestEdgeCases::test_empty_context": "a missing path is an error, not 'null'",
    "TestErrorHandling::test_empty_expression": "${} is an error",
    "TestErrorHandling::test_invalid_jmespath_expression": "error messages are worded "
    "differently (they still name the expression)",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name, reason in _DIFFERENCES.items():
            if item.nodeid.endswith(f"test_template_rendering.py::{name}"):
                item.add_marker(pytest.mark.xfail(strict=True, reason=f"docs/compat.md: {reason}"))
