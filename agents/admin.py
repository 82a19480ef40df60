from django.contrib import admin, messages
from django.db.models import Count, Q
from django.utils import timezone

from agents.models import Agent, Credential
from agents.services import agent_create
from audit import record
from audit.services import Actor


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


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "is_active", "scope_list", "credential_count", "created_at"]
    list_filter = ["is_active", "created_at"]
    search_fields = ["name", "description", "id"]
    date_hierarchy = "created_at"
    readonly_fields = ["id", "created_at", "updated_at"]
    fields = ["id", "name", "description", "scopes", "webhook_url", "is_active", "created_at"]
    inlines = [CredentialInline]

    def get_queryset(self, request):  # noqa: ANN001, ANN201
        active = Q(credentials__revoked_at__isnull=True)
        return super().get_queryset(request).annotate(_credentials=Count("credentials", active))

    @admin.display(description="scopes")
    def scope_list(self, obj: Agent) -> str:
        return ", ".join(obj.scopes)

    @admin.display(description="live credentials", ordering="_credentials")
    def credential_count(self, obj: Agent) -> int:
        return obj._credentials

    def save_model(self, request, obj, form, change) -> None:  # noqa: ANN001
        actor = Actor.user(request.user)
        if change:
            super().save_model(request, obj, form, change)
            record(
                actor=actor,
                action="agent.updated",
                subject=obj,
                details={"changed": form.changed_data},
            )
            return
        # Creation goes through the service so the first secret is issued and audited.
        agent, secret = agent_create(
            name=obj.name,
            scopes=obj.scopes,
            description=obj.description,
            webhook_url=obj.webhook_url,
            actor=actor,
        )
        obj.pk = agent.pk
        obj.created_at = agent.created_at
        messages.warning(
            request,
            f"Secret for {agent.name}: {secret} — copy it now, it is stored only as a hash "
            "and will not be shown again.",
        )


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
        revoked = 0
        for credential in queryset.filter(revoked_at__isnull=True).select_related("agent"):
            # Conditional update: a concurrent revoke does not double-count or double-audit.
            if Credential.objects.filter(pk=credential.pk, revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            ):
                revoked += 1
                record(
                    actor=actor,
                    action="credential.revoked",
                    subject=credential.agent,
                    details={"credential": credential.key_id},
                )
        self.message_user(request, f"Revoked {revoked} credential(s).", messages.SUCCESS)
