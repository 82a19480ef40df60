"""Payload validation at task creation: every problem, each with its path."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from ordinaut.errors import InvalidInput
from pipelines.schema import PAYLOAD_SCHEMA
from pipelines.validation import validate_payload, validate_structure


def problems(payload, **kwargs) -> dict[str, list[str]]:
    with pytest.raises(InvalidInput) as caught:
        validate_payload(payload, **kwargs)
    return caught.value.details


def test_payload_schema_is_a_valid_draft_2020_12_schema():
    Draft202012Validator.check_schema(PAYLOAD_SCHEMA)
    assert PAYLOAD_SCHEMA["$schema"].endswith("2020-12/schema")


def test_structure_errors_point_at_the_field_without_a_database():
    payload = {"pipeline": [{"id": "a", "uses": "debug.echo", "iff": "x", "timeout_seconds": -1}]}
    with pytest.raises(InvalidInput) as caught:
        validate_structure(payload)
    assert caught.value.details == {
        "payload.pipeline[0].iff": ["unknown field"],
        "payload.pipeline[0].timeout_seconds": ["-1 is less than or equal to the minimum of 0"],
    }


def test_missing_pipeline_and_wrong_types():
    assert problems({"params": []}) == {
        "payload.params": ["must be of type object"],
        "payload.pipeline": ["required"],
    }
    assert problems([]) == {"payload": ["must be an object"]}


@pytest.mark.django_db
def test_empty_pipeline_is_accepted_and_returned_unchanged():
    payload = {"pipeline": []}
    assert validate_payload(payload) is payload


@pytest.mark.django_db
def test_every_problem_is_reported_with_its_path_and_the_first_is_the_message():
    payload = {
        "params": {"city": "Chisinau"},
        "pipeline": [
            {"id": "a", "uses": "debug.echo", "with": {"x": "${params.town}"}},
            {"id": "a", "uses": "nope.tool"},
            {"id": "c", "uses": "http.request", "with": {"method": "GET"}},
            {"id": "d", "uses": "debug.log", "if": "steps.a.x >", "with": {"message": "m"}},
            {"id": "e", "uses": "debug.echo", "with": {"y": "${steps.zz.out} ${steps.f}"}},
            {"id": "f", "uses": "debug.echo"},
        ],
        "output": "${steps.missing}",
    }
    with pytest.raises(InvalidInput) as caught:
        validate_payload(payload)
    details = caught.value.details
    assert caught.value.message == "payload.pipeline[1].id: 'a' is already used by pipeline[0]"
    assert details["payload.pipeline[0].with.x"] == ["${params.town}: unknown parameter 'town'"]
    assert details["payload.pipeline[1].uses"] == ["unknown tool 'nope.tool'"]
    assert details["payload.pipeline[2].with.url"] == ["required"]
    assert details["payload.pipeline[3].if"][0].startswith("invalid expression")
    assert details["payload.pipeline[4].with.y"] == [
        "${steps.zz.out}: unknown step 'zz'",
        "${steps.f}: step 'f' has not run yet at this point",
    ]
    assert details["payload.output"] == ["${steps.missing}: unknown step 'missing'"]


@pytest.mark.django_db
def test_templated_values_are_not_type_checked_but_literals_are():
    ok = {
        "params": {"n": 2},
        "pipeline": [{"id": "s", "uses": "debug.sleep", "with": {"seconds": "${params.n}"}}],
    }
    assert validate_payload(ok) is ok
    bad = {"pipeline": [{"id": "s", "uses": "debug.sleep", "with": {"seconds": "two"}}]}
    assert problems(bad) == {"payload.pipeline[0].with.seconds": ["must be of type number"]}


@pytest.mark.django_db
def test_save_as_names_are_referenceable_and_unique():
    payload = {
        "pipeline": [
            {"id": "one", "uses": "debug.echo", "save_as": "first"},
            {"id": "two", "uses": "debug.echo", "with": {"v": "${steps.first.x}"}},
            {"id": "three", "uses": "debug.echo", "save_as": "first"},
        ]
    }
    assert problems(payload) == {
        "payload.pipeline[2].save_as": ["'first' is already used by pipeline[0]"]
    }


@pytest.mark.django_db
def test_tools_the_agent_scopes_do_not_allow_are_refused():
    payload = {"pipeline": [{"id": "h", "uses": "http.request", "with": {"url": "https://x.y"}}]}
    assert problems(payload, scopes=["tasks:write"]) == {
        "payload.pipeline[0].uses": ["http.request needs scope 'http'"]
    }
    assert validate_payload(payload, scopes=["tasks:write", "http"]) is payload
    assert validate_payload(payload, scopes=["admin"]) is payload


@pytest.mark.django_db
def test_unknown_mcp_server_is_named():
    payload = {"pipeline": [{"id": "m", "uses": "mcp.ghost.tool"}]}
    assert problems(payload) == {
        "payload.pipeline[0].uses": [
            "unknown tool 'mcp.ghost.tool': MCP server 'ghost' is not configured"
        ]
    }


@pytest.mark.django_db
def test_original_quick_start_payload_is_valid():
    payload = {
        "params": {"user_name": "Ordinaut User"},
        "pipeline": [
            {
                "id": "get_data",
                "uses": "debug.echo",
                "with": {
                    "message": "Hello, ${params.user_name}!",
                    "details": {"timestamp": "${now}"},
                },
                "save_as": "greeting",
            },
            {
                "id": "process_data",
                "uses": "debug.log",
                "with": {
                    "message": "Step 1 said: '${steps.greeting.message}' at "
                    "${steps.greeting.details.timestamp}"
                },
            },
        ],
    }
    assert validate_payload(payload) is payload


@pytest.mark.django_db
@pytest.mark.parametrize("expires", [10**13, 30 * 86400 + 1])
def test_an_approval_cannot_wait_longer_than_thirty_days(expires):
    step = {"id": "ask", "uses": "approval.request",
            "with": {"prompt": "ok?", "expires_in_seconds": expires}}  # fmt: skip
    assert problems({"pipeline": [step]}) == {
        "payload.pipeline[0].with.expires_in_seconds": [
            f"{expires} is greater than the maximum of {30 * 86400}"
        ]
    }
