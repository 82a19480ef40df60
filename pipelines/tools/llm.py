"""llm.chat and llm.plan: any OpenAI-compatible `/chat/completions` endpoint.

The endpoint is the operator's (settings LLM_BASE_URL, LLM_API_KEY, LLM_MODEL), so it is
trusted and not subject to http.request's address guard.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from django.conf import settings

from pipelines.tools.base import ToolContext, ToolError, ToolSpec, ToolTimeout

_OUTPUT_SCHEMA = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string"},
        "json": {},
        "model": {"type": "string"},
        "finish_reason": {"type": ["string", "null"]},
        "usage": {"type": ["object", "null"]},
    },
}
_PLAN_SYSTEM_PROMPT = (
    "You are the planning step of an automated pipeline. Follow the instruction using the "
    "context provided as JSON. Answer with the result only."
)


def chat(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    return complete(
        messages=arguments["messages"],
        model=arguments.get("model"),
        temperature=arguments.get("temperature"),
        max_tokens=arguments.get("max_tokens"),
        json_schema=arguments.get("json_schema"),
        timeout=context.timeout,
    )


def plan(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    known = {"instruction", "model", "temperature", "max_tokens", "json_schema"}
    material = {key: value for key, value in arguments.items() if key not in known}
    user = arguments["instruction"]
    if material:
        user += "\n\nContext:\n" + json.dumps(material, ensure_ascii=False, default=str)
    return complete(
        messages=[
            {"role": "system", "content": _PLAN_SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ],
        model=arguments.get("model"),
        temperature=arguments.get("temperature"),
        max_tokens=arguments.get("max_tokens"),
        json_schema=arguments.get("json_schema"),
        timeout=context.timeout,
    )


def complete(
    *,
    messages: list[dict[str, Any]],
    model: str | None,
    temperature: float | None,
    max_tokens: int | None,
    json_schema: dict[str, Any] | None,
    timeout: float,
) -> dict[str, Any]:
    """One chat completion; returns {text, json?, model, finish_reason, usage}.

    Raises ToolError: retryable for timeouts, transport errors, 429 and 5xx.
    """
    if not settings.LLM_BASE_URL:
        raise ToolError("llm: LLM_BASE_URL is not configured", retryable=False)
    body: dict[str, Any] = {"model": model or settings.LLM_MODEL, "messages": messages}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": json_schema, "strict": True},
        }
    headers = {}
    if settings.LLM_API_KEY:
        headers["Authorization"] = f"Bearer {settings.LLM_API_KEY}"
    url = settings.LLM_BASE_URL.rstrip("/") + "/chat/completions"
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=timeout)
    except httpx.TimeoutException as exc:
        raise ToolTimeout(f"llm: {url} timed out after {timeout:g}s") from exc
    except httpx.HTTPError as exc:
        raise ToolError(f"llm: {url} failed: {exc}") from exc
    return _answer(response, url=url, model=body["model"], json_schema=json_schema)


def _answer(
    response: httpx.Response, *, url: str, model: str, json_schema: dict[str, Any] | None
) -> dict[str, Any]:
    """The tool's output from the endpoint's answer; ToolError for an error or a bad shape."""
    if response.status_code >= 400:
        raise ToolError(
            f"llm: {url} answered {response.status_code}: {response.text[:300]}",
            retryable=response.status_code == 429 or response.status_code >= 500,
        )
    try:
        data = response.json()
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ToolError(f"llm: unexpected response from {url}: {response.text[:300]}") from exc
    result: dict[str, Any] = {
        "text": text,
        "model": data.get("model", model),
        "finish_reason": choice.get("finish_reason"),
        "usage": data.get("usage"),
    }
    if json_schema is not None:
        try:
            result["json"] = json.loads(text)
        except ValueError as exc:
            raise ToolError(f"llm: the answer is not the JSON asked for: {text[:200]}") from exc
    return result


# A bound on what a step may ask for; larger numbers only reach the endpoint to be refused.
MAX_TOKENS = 1_000_000

_COMMON = {
    "model": {"type": "string"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS},
    "json_schema": {"type": "object", "description": "Ask for JSON matching this schema."},
}

TOOLS = [
    ToolSpec(
        name="llm.chat",
        description="Chat completion from the configured OpenAI-compatible endpoint.",
        input_schema={
            "type": "object",
            "required": ["messages"],
            "additionalProperties": False,
            "properties": {
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"enum": ["system", "user", "assistant", "tool"]},
                            "content": {},
                        },
                    },
                },
                **_COMMON,
            },
        },
        output_schema=_OUTPUT_SCHEMA,
        required_scope="llm",
        timeout_seconds=120,
        func=chat,
    ),
    ToolSpec(
        name="llm.plan",
        description=(
            "The original's one-instruction call: `instruction` plus any other fields as "
            "context; output {text, ...}."
        ),
        input_schema={
            "type": "object",
            "required": ["instruction"],
            "properties": {"instruction": {"type": "string", "minLength": 1}, **_COMMON},
        },
        output_schema=_OUTPUT_SCHEMA,
        required_scope="llm",
        timeout_seconds=120,
        func=plan,
    ),
]
