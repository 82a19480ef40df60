"""Agents and credentials in the console. Every write goes through `agents.services`, so
the admin's changes carry the same validation and audit rows as the API's."""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_cache_control

from agents.credentials import webhook_secret
from agents.models import BUDGETS, Agent, Credential
from agents.services import (
    AGENT_UPDATABLE_FIELDS,
    agent_create,
    agent_deactivate,
    agent_pause,
    agent_resume,
    agent_update,
    agent_webhook_secret_rotate,
    clean_scopes,
    credential_issue_api_key,
    credential_revoke,
    default_budgets,
)
from audit.services import Actor
from ordinaut.errors import Conflict, InvalidInput


class AgentForm(forms.ModelForm):
    class Meta:
        model = Agent
        fields = ["name", "description", "scopes", "webhook_url", "is_active", *BUDGETS]
        help_texts = {name: "Empty: unlimited." for name in BUDGETS}

    def clean_scopes(self) -> list[str]:
        # The service's rule, checked here so a bad scope is a form error, not a failed save.
        try:
            return clean_scopes(self.cleaned_data["scopes"])
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message) from exc


class CredentialInline(admin.TabularInline):
    model = Credential
    extra = 0
    can_delete = False
    fields = ["kind", "key_id", "label", "created_at", "expires_at", "revoked_at", "last_used_at"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        # New secrets are shown once, so they are issued by the agent form or createagent.
        return False


@dataclass(frozen=True)
class _Issued:
    agent: Agent
    label: str
    secret: str
    kind: str


def secrets_page(
    request: HttpRequest, title: str, issued: list[_Issued], next_url: str | None = None
) -> TemplateResponse:
    """The page that shows new secrets once: in this response only, never in a message
    (messages are kept in a cookie or the session) and never cached."""
    context = {
        **admin.site.each_context(request),
        "title": title,
        "issued": issued,
        "next_url": next_url or reverse("admin:agents_agent_changelist"),
    }
    response = TemplateResponse(request, "admin/agents/agent/secrets_issued.html", context)
    patch_cache_control(response, no_store=True, private=True)
    return response


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "scope_list", "active_tasks", "runs_24h", "budget_use",
                    "credential_count", "created_at"]  # fmt: skip
    list_filter = ["is_active", ("paused_at", admin.EmptyFieldListFilter), "created_at"]
    actions = ["pause", "resume", "issue_api_key", "rotate_webhook_secret"]
    search_fields = ["name", "description", "id"]
    date_hierarchy = "created_at"
    readonly_fields = ["id", "webhook_key_id", "status", "paused_at", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": [
            "id", "name", "description", "scopes", "webhook_url", "webhook_key_id", "is_active",
            "status", "paused_at", "created_at",
        ]}),
        ("Budgets", {"fields": list(BUDGETS)}),
    ]  # fmt: skip
    inlines = [CredentialInline]
    form = AgentForm

    def get_queryset(self, request):  # noqa: ANN001, ANN201
        active = Q(credentials__revoked_at__isnull=True)
        day_ago = timezone.now() - timedelta(hours=24)
        # Reverse relations by name: agents/ does not import the tasks app.
        return (
            super()
            .get_queryset(request)
            .annotate(
                _credentials=Count("credentials", active, distinct=True),
                _active_tasks=Count("tasks", Q(tasks__status="active"), distinct=True),
                _runs_24h=Count(
                    "tasks__runs", Q(tasks__runs__started_at__gte=day_ago), distinct=True
                ),
            )
        )

    @admin.display(description="active tasks", ordering="_active_tasks")
    def active_tasks(self, obj: Agent) -> int:
        return obj._active_tasks

    @admin.display(description="runs, 24 h", ordering="_runs_24h")
    def runs_24h(self, obj: Agent) -> int:
        return obj._runs_24h

    @admin.display(description="budgets used")
    def budget_use(self, obj: Agent) -> str:
        """Active tasks against max_active_tasks, and the other budgets set (empty: none)."""
        parts = []
        if obj.max_active_tasks is not None:
            parts.append(f"tasks {obj._active_tasks}/{obj.max_active_tasks}")
        for name, label in (("max_runs_per_hour", "runs/h"), ("max_concurrent_runs", "running"),
                            ("max_llm_tokens_per_day", "tokens/day")):  # fmt: skip
            if getattr(obj, name) is not None:
                parts.append(f"{label} ≤ {getattr(obj, name)}")
        return ", ".join(parts) or "unlimited"

    @admin.display(description="scopes")
    def scope_list(self, obj: Agent) -> str:
        return ", ".join(obj.scopes)

    @admin.display(description="live credentials", ordering="_credentials")
    def credential_count(self, obj: Agent) -> int:
        return obj._credentials

    @admin.action(description="Pause selected agents (hold all their work)", permissions=["change"])
    def pause(self, request, queryset) -> None:  # noqa: ANN001
        self._switch(request, queryset, agent_pause, "paused")

    @admin.action(description="Resume selected agents", permissions=["change"])
    def resume(self, request, queryset) -> None:  # noqa: ANN001
        self._switch(request, queryset, agent_resume, "resumed")

    @admin.action(description="Issue an API key (shown once)", permissions=["change"])
    def issue_api_key(self, request, queryset) -> TemplateResponse | None:  # noqa: ANN001
        actor = Actor.user(request.user)
        issued = []
        for agent in queryset.filter(is_active=True):
            credential, token = credential_issue_api_key(
                agent=agent, actor=actor, label=f"issued in the admin by {request.user}"
            )
            issued.append(_Issued(agent, f"API key {credential.key_id}", token, "api_key"))
        if not issued:
            self.message_user(request, "Only active agents get API keys.", messages.WARNING)
            return None
        return secrets_page(request, "API keys issued", issued)

    @admin.action(description="Rotate webhook signing secret", permissions=["change"])
    def rotate_webhook_secret(self, request, queryset) -> TemplateResponse | None:  # noqa: ANN001
        actor = Actor.user(request.user)
        issued: list[_Issued] = []
        for agent in queryset:
            try:
                rotated, secret = agent_webhook_secret_rotate(agent_id=agent.pk, actor=actor)
            except Conflict as exc:
                self.message_user(request, exc.message, messages.WARNING)
                continue
            issued.append(_Issued(rotated, f"webhook signing secret (key {rotated.webhook_key_id})",
                                  secret, "webhook"))  # fmt: skip
        if issued:
            return secrets_page(request, "Webhook secrets rotated", issued)
        return None

    def _switch(self, request, queryset, service, done: str) -> None:  # noqa: ANN001
        actor, changed, refused = Actor.user(request.user), 0, []
        for agent in queryset:
            try:
                service(agent_id=agent.pk, actor=actor)
                changed += 1
            except Conflict as exc:
                refused.append(exc.message)
        self.message_user(request, f"{changed} agent(s) {done}.", messages.SUCCESS)
        for message in refused:
            self.message_user(request, message, messages.WARNING)

    def get_changeform_initial_data(self, request) -> dict[str, Any]:  # noqa: ANN001
        # A new agent's form shows the budgets it will get, so clearing one means unlimited.
        return {**super().get_changeform_initial_data(request), **default_budgets()}

    def save_model(self, request, obj, form, change) -> None:  # noqa: ANN001
        actor = Actor.user(request.user)
        if change:
            self._update(obj, form, actor)
            return
        # Creation goes through the service so the first secret is issued and audited.
        agent, secret = agent_create(
            name=obj.name,
            scopes=obj.scopes,
            description=obj.description,
            webhook_url=obj.webhook_url,
            actor=actor,
        )
        budgets = {name: form.cleaned_data[name] for name in BUDGETS}
        if budgets != agent.budgets:
            agent_update(agent_id=agent.pk, changes={"budgets": budgets}, actor=actor)
        obj.pk = agent.pk
        obj.created_at = agent.created_at
        issued = [_Issued(agent, "agent secret (POST /agents/auth/token)", secret, "agent")]
        if agent.webhook_key_id:
            label = f"webhook signing secret (key {agent.webhook_key_id})"
            hook = webhook_secret(agent.pk, agent.webhook_key_id)
            issued.append(_Issued(agent, label, hook, "webhook"))
        # Shown by response_add, in the response itself.
        request.issued_secrets = issued

    def response_add(self, request, obj, post_url_continue=None) -> HttpResponse:  # noqa: ANN001
        issued = getattr(request, "issued_secrets", None)
        if not issued:
            return super().response_add(request, obj, post_url_continue)
        return secrets_page(request, f"Agent {obj.name} created", issued,
                            reverse("admin:agents_agent_change", args=[obj.pk]))  # fmt: skip

    def _update(self, obj: Agent, form: forms.ModelForm, actor: Actor) -> None:
        changes: dict[str, Any] = {
            field: form.cleaned_data[field]
            for field in form.changed_data
            if field in AGENT_UPDATABLE_FIELDS
        }
        budgets = {name: form.cleaned_data[name] for name in form.changed_data if name in BUDGETS}
        if budgets:
            changes["budgets"] = budgets
        # Unticking "active" is a deactivation: the credentials are revoked with it, as
        # DELETE /agents/{id} does, rather than leaving live keys on an inactive agent.
        deactivate = changes.get("is_active") is False
        if deactivate:
            del changes["is_active"]
        if changes:
            agent_update(agent_id=obj.pk, changes=changes, actor=actor)
        if deactivate:
            agent_deactivate(agent_id=obj.pk, actor=actor)
        obj.refresh_from_db()


@admin.register(Credential)
class CredentialAdmin(admin.ModelAdmin):
    list_display = ["key_id", "agent", "kind", "label", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["kind", ("revoked_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["key_id", "agent__name", "label"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "agent", "kind", "key_id", "label", "created_at", "expires_at", "revoked_at",
        "last_used_at",
    ]  # fmt: skip
    exclude = ["secret_hash"]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:  # noqa: ANN001
        return False

    @admin.action(description="Revoke selected credentials", permissions=["change"])
    def revoke(self, request, queryset) -> None:  # noqa: ANN001
        actor = Actor.user(request.user)
        now = timezone.now()
        revoked = 0
        for credential in queryset.filter(revoked_at__isnull=True).select_related("agent"):
            # The service locks the row: a concurrent revoke wins once, and only the call
            # that revoked it stamps `now` (and writes the audit row).
            revoked_now = credential_revoke(
                agent=credential.agent, key_id=credential.key_id, actor=actor, now=now
            )
            revoked += revoked_now.revoked_at == now
        self.message_user(request, f"Revoked {revoked} credential(s).", messages.SUCCESS)
