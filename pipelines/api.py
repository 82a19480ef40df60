"""/tools and /schemas/pipeline: what a pipeline may use, and the payload's JSON Schema."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ordinaut import scopes
from pipelines.registry import list_tools
from pipelines.schema import PAYLOAD_SCHEMA
from pipelines.tools.base import ToolSpec


def tool_entry(tool: ToolSpec) -> tuple[str, dict[str, Any]]:
    """(name, {description, input_schema, output_schema, scope}): one tool as /tools lists it.

    REST's /tools and MCP's list_tools both render tools with this.
    """
    return tool.name, {
        "description": tool.description or "",
        "input_schema": tool.input_schema or {},
        "output_schema": tool.output_schema or {},
        # The scope a step using this tool needs (null: none); the executor checks the same.
        "scope": tool.required_scope,
    }


def tool_catalog() -> dict[str, dict[str, Any]]:
    """Every usable tool by name, as /tools and MCP's list_tools return them."""
    return dict(tool_entry(tool) for tool in list_tools())


class ToolListApi(APIView):
    # The API's default permission (HasScope) and throttle (per agent) apply, configured in
    # settings.REST_FRAMEWORK: pipelines/ does not import agents/.
    required_scope = scopes.TOOLS_READ
    throttle_scope = "reads"

    @extend_schema(
        operation_id="tools_list",
        responses={200: OpenApiResponse(description="Tool name -> description and schemas.")},
    )
    def get(self, request: Request) -> Response:
        return Response(tool_catalog())


class PipelineSchemaApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="schemas_pipeline",
        auth=[],
        responses={200: OpenApiResponse(description="JSON Schema of a task payload.")},
    )
    def get(self, request: Request) -> Response:
        return Response(PAYLOAD_SCHEMA)
