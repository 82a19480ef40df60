"""OpenAPI (drf-spectacular): the Bearer scheme, each operation's scope, the error envelope.

Each operation states the scope its view declares (`x-required-scope` and a line in its
description) and documents the error envelope for every 4xx it can answer, so generated
clients and schemathesis know the whole contract.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

from agents.permissions import HasScope, required_scope_for
from ordinaut.api import ErrorSerializer

_ERRORS = {
    "400": "Malformed JSON.",
    "401": "Missing, invalid, expired or revoked token (WWW-Authenticate: Bearer).",
    "403": "The token lacks the required scope, or names another agent.",
    "404": "No such object, or it belongs to another agent.",
    "409": "The object's state does not allow this action.",
    "413": "Request body too large.",
    "415": "Request body is not application/json.",
    "422": "Validation failed; details map field paths to reasons.",
    "429": "Rate limit exceeded; see Retry-After.",
}


class BearerAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "agents.authentication.AgentAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "A JWT access token from POST /agents/auth/token, or an API key (ord_k_...)."
            ),
        }


class ScopedAutoSchema(AutoSchema):
    """AutoSchema that documents required scopes and the error envelope on every operation."""

    def _required_scope(self) -> str | None:
        if not any(p is HasScope for p in getattr(self.view, "permission_classes", [])):
            return None
        try:
            return required_scope_for(self.view, self.method)
        except LookupError:
            return None

    def get_description(self) -> str:
        description = super().get_description() or ""
        scope = self._required_scope()
        if scope:
            description = f"{description}\n\nRequires scope: `{scope}` (or `admin`).".strip()
        return description

    def get_extensions(self) -> dict[str, Any]:
        extensions = dict(super().get_extensions() or {})
        scope = self._required_scope()
        if scope:
            extensions["x-required-scope"] = scope
        return extensions

    def get_tags(self) -> list[str]:
        first = self.path.strip("/").split("/")[0]
        return [first or "root"]

    def _is_create_operation(self) -> bool:
        # Views state their success codes explicitly (POST /tasks answers 201 or 200).
        return False

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if getattr(self.view, "response_nullable", False) and "200" in responses:
            for media in responses["200"].get("content", {}).values():
                media["schema"] = {"allOf": [media["schema"]], "nullable": True}
        for code, description in _ERRORS.items():
            if code not in responses:
                error = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                error["description"] = description
                responses[code] = error
        return responses


def drop_trailing_slash_duplicates(endpoints: list[tuple], **kwargs: Any) -> list[tuple]:
    """PREPROCESSING_HOOK: every route also answers with a trailing slash; document it once."""
    return [
        endpoint for endpoint in endpoints if endpoint[0] == "/" or not endpoint[0].endswith("/")
    ]
