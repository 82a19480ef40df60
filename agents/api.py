"""/agents and /agents/auth: agent administration and the token exchange.

Administration needs `admin`, as in the original. The token endpoints are public (they are
how a credential becomes a token) and throttled per address and claimed agent id.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status
from rest_framework.exceptions import Throttled
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import selectors, services
from agents.credentials import webhook_secret
from agents.models import CredentialKind
from agents.permissions import HasScope
from agents.serializers import (
    AgentCreatedSerializer,
    AgentCreateSerializer,
    AgentListQuerySerializer,
    AgentSerializer,
    AgentUpdateSerializer,
    CredentialIssuedSerializer,
    CredentialIssueSerializer,
    CredentialSerializer,
    RefreshRequestSerializer,
    TokenRequestSerializer,
    TokenResponseSerializer,
    WebhookSecretSerializer,
    agent_data,
    credential_data,
)
from agents.throttles import AgentRateThrottle, TokenExchangeThrottle, record_failed_exchange
from agents.tokens import TokenPair
from audit.services import Actor
from ordinaut import scopes
from ordinaut.api import OperationSerializer, iso, operation, parse_body, parse_query
from ordinaut.errors import Unauthenticated

_EXAMPLE_AGENT = {
    "name": "morning-assistant",
    "scopes": ["tasks:read", "tasks:write", "runs:read", "notify"],
    "webhook_url": "https://webhook.example.com/agent-notifications",
}


class AgentListCreateApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.ADMIN
    throttle_classes = [AgentRateThrottle]
    throttle_scope = {"GET": "reads", "POST": "tasks"}

    @extend_schema(
        operation_id="agents_list",
        parameters=[AgentListQuerySerializer],
        responses=AgentSerializer(many=True),
        description="All agents (a plain list, as in the original).",
    )
    def get(self, request: Request) -> Response:
        query = parse_query(AgentListQuerySerializer, request)
        agents = selectors.agent_list(
            name_filter=query.get("name_filter"), scope_filter=query.get("scope_filter")
        )
        window = agents[query["offset"] : query["offset"] + query["limit"]]
        return Response([agent_data(agent) for agent in window])

    @extend_schema(
        operation_id="agents_create",
        request=AgentCreateSerializer,
        responses={201: AgentCreatedSerializer},
        examples=[OpenApiExample("agent", value=_EXAMPLE_AGENT, request_only=True)],
        description="Create an agent. Its first secret is in the response, shown once.",
    )
    def post(self, request: Request) -> Response:
        data = parse_body(AgentCreateSerializer, request)
        agent, secret = services.agent_create(
            name=data["name"],
            scopes=data["scopes"],
            description=data.get("description", ""),
            webhook_url=data.get("webhook_url") or "",
            actor=Actor.agent(request.user),
        )
        created = {**agent_data(agent), "agent_secret": secret}
        if agent.webhook_key_id:
            created["webhook_secret"] = webhook_secret(agent.pk, agent.webhook_key_id)
        return Response(created, status=status.HTTP_201_CREATED)


class AgentDetailApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.ADMIN
    throttle_classes = [AgentRateThrottle]
    throttle_scope = {"GET": "reads", "PUT": "tasks", "PATCH": "tasks", "DELETE": "tasks"}

    @extend_schema(operation_id="agents_retrieve", responses=AgentSerializer)
    def get(self, request: Request, agent_id: str) -> Response:
        return Response(agent_data(selectors.agent_get(agent_id=agent_id)))

    @extend_schema(
        operation_id="agents_update",
        request=AgentUpdateSerializer,
        responses=AgentSerializer,
        description="Partial update (PUT and PATCH alike). Narrowed scopes apply at once.",
    )
    def put(self, request: Request, agent_id: str) -> Response:
        changes = parse_body(AgentUpdateSerializer, request)
        if "webhook_url" in changes:
            changes["webhook_url"] = changes["webhook_url"] or ""
        agent = services.agent_update(
            agent_id=agent_id, changes=changes, actor=Actor.agent(request.user)
        )
        return Response(agent_data(agent))

    @extend_schema(
        operation_id="agents_partial_update",
        request=AgentUpdateSerializer,
        responses=AgentSerializer,
    )
    def patch(self, request: Request, agent_id: str) -> Response:
        return self.put(request, agent_id)

    @extend_schema(
        operation_id="agents_destroy",
        responses={200: OperationSerializer},
        description=(
            "Deactivate the agent and revoke its credentials. Its tasks and history are "
            "kept (the original deleted them)."
        ),
    )
    def delete(self, request: Request, agent_id: str) -> Response:
        agent = services.agent_deactivate(agent_id=agent_id, actor=Actor.agent(request.user))
        return Response(
            operation(
                "Agent deleted successfully",
                {"agent_id": str(agent.id), "agent_name": agent.name, "is_active": False},
            )
        )


class AgentPauseApi(APIView):
    """The kill switch: POST /agents/{id}/pause and /resume (scope `admin`)."""

    permission_classes = [HasScope]
    required_scope = scopes.ADMIN
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "tasks"
    action = "pause"

    @extend_schema(
        request=None,
        responses={200: AgentSerializer},
        description=(
            "pause: none of the agent's work is queued or claimed, and its running runs stop "
            "at their next step (409 unless active). resume: everything goes on; instants "
            "missed meanwhile follow each task's misfire policy (409 unless paused)."
        ),
    )
    def post(self, request: Request, agent_id: str) -> Response:
        service = services.agent_pause if self.action == "pause" else services.agent_resume
        agent = service(agent_id=agent_id, actor=Actor.agent(request.user))
        return Response(agent_data(agent))


class AgentWebhookSecretApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.ADMIN
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "tasks"

    @extend_schema(
        operation_id="agents_webhook_secret_rotate",
        request=None,
        responses={200: WebhookSecretSerializer},
        description=(
            "Rotate the agent's webhook signing key: deliveries from now on are signed with "
            "the new secret (shown once) and carry its X-Ordinaut-Key-Id. 409 without a "
            "webhook_url."
        ),
    )
    def post(self, request: Request, agent_id: str) -> Response:
        agent, secret = services.agent_webhook_secret_rotate(
            agent_id=agent_id, actor=Actor.agent(request.user)
        )
        return Response(
            {
                "agent_id": str(agent.pk),
                "webhook_key_id": agent.webhook_key_id,
                "webhook_secret": secret,
            }
        )


class AgentCredentialsApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.ADMIN
    throttle_classes = [AgentRateThrottle]
    throttle_scope = {"GET": "reads", "POST": "tasks"}

    @extend_schema(
        operation_id="agents_credentials_list", responses=CredentialSerializer(many=True)
    )
    def get(self, request: Request, agent_id: str) -> Response:
        agent = selectors.agent_get(agent_id=agent_id)
        return Response([credential_data(c) for c in selectors.credential_list(agent=agent)])

    @extend_schema(
        operation_id="agents_credentials_create",
        request=CredentialIssueSerializer,
        responses={201: CredentialIssuedSerializer},
        examples=[
            OpenApiExample("secret", value={}, request_only=True),
            OpenApiExample(
                "api key",
                value={"kind": "api_key", "label": "ci", "expires_in_days": 90},
                request_only=True,
            ),
        ],
        description="Issue a new secret (default) or API key. It is shown once.",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        # The original accepted an empty body here; so do we.
        data = parse_body(CredentialIssueSerializer, request) if request.data else {}
        kind = data.get("kind", CredentialKind.SECRET)
        agent = selectors.agent_get(agent_id=agent_id)
        actor = Actor.agent(request.user)
        label = data.get("label", "")
        body = {"agent_id": str(agent.id), "kind": kind}
        if kind == CredentialKind.API_KEY:
            days = data.get("expires_in_days")
            expires_at = timezone.now() + timedelta(days=days) if days else None
            credential, token = services.credential_issue_api_key(
                agent=agent, actor=actor, label=label, expires_at=expires_at
            )
            body["api_key"] = token
        else:
            credential, token = services.credential_issue_secret(
                agent=agent, actor=actor, label=label
            )
            body["agent_secret"] = token
        body.update(
            key_id=credential.key_id,
            expires_at=iso(credential.expires_at),
            message="Agent credentials created successfully",
        )
        return Response(body, status=status.HTTP_201_CREATED)


class AgentCredentialRevokeApi(APIView):
    permission_classes = [HasScope]
    required_scope = scopes.ADMIN
    throttle_classes = [AgentRateThrottle]
    throttle_scope = "tasks"

    @extend_schema(operation_id="agents_credentials_revoke", responses={200: OperationSerializer})
    def delete(self, request: Request, agent_id: str, key_id: str) -> Response:
        agent = selectors.agent_get(agent_id=agent_id)
        services.credential_revoke(agent=agent, key_id=key_id, actor=Actor.agent(request.user))
        return Response(operation("Credential revoked", {"key_id": key_id}))


def _token_response(pair: TokenPair, scope_list: list[str]) -> Response:
    return Response(
        {
            "access_token": pair.access,
            "refresh_token": pair.refresh,
            "token_type": "bearer",
            "expires_in": pair.expires_in,
            "scope": " ".join(scope_list),
        }
    )


class TokenApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [TokenExchangeThrottle]
    throttle_scope = "auth"

    @extend_schema(
        operation_id="agents_auth_token",
        request=TokenRequestSerializer,
        responses={200: TokenResponseSerializer},
        auth=[],
        examples=[
            OpenApiExample(
                "exchange",
                value={
                    "agent_id": "550e8400-e29b-41d4-a716-446655440000",
                    "agent_secret": "ord_s_0123456789abcdef_...",
                },
                request_only=True,
            )
        ],
        description="Exchange an agent id and secret for a JWT access and refresh token.",
    )
    def post(self, request: Request) -> Response:
        data = parse_body(TokenRequestSerializer, request)
        try:
            agent, pair = services.token_exchange(
                agent_id=data["agent_id"], agent_secret=data.get("agent_secret")
            )
        except Unauthenticated:
            # Only refusals count against the claimed id (see TokenExchangeThrottle).
            wait = record_failed_exchange(data["agent_id"])
            if wait is not None:
                raise Throttled(wait=wait) from None
            raise
        return _token_response(pair, agent.scopes)


class TokenRefreshApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [TokenExchangeThrottle]
    throttle_scope = "auth"

    @extend_schema(
        operation_id="agents_auth_refresh",
        request=RefreshRequestSerializer,
        responses={200: TokenResponseSerializer},
        auth=[],
        description="Rotate a refresh token: it is revoked and a new pair returned.",
    )
    def post(self, request: Request) -> Response:
        data = parse_body(RefreshRequestSerializer, request)
        agent, pair = services.token_refresh(refresh_token=data["refresh_token"])
        return _token_response(pair, agent.scopes)


class TokenRevokeApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [TokenExchangeThrottle]
    throttle_scope = "auth"

    @extend_schema(
        operation_id="agents_auth_revoke",
        request=RefreshRequestSerializer,
        responses={200: OperationSerializer},
        auth=[],
        description=(
            "Revoke an access or refresh token (field name `refresh_token` as in the "
            "original). Revoking a refresh token also ends its access tokens."
        ),
    )
    def post(self, request: Request) -> Response:
        data = parse_body(RefreshRequestSerializer, request)
        revoked = services.token_revoke(token=data["refresh_token"])
        message = "Token revoked successfully" if revoked else "Token was already invalid"
        return Response({"success": True, "message": message, "details": {"revoked": revoked}})
