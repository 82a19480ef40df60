import json

from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from audit.services import Actor
from pipelines import services
from pipelines.models import McpServer
from pipelines.tools.base import ToolError


def _schema(tool: dict) -> str:
    return json.dumps(tool.get("input_schema"), indent=2)


@admin.register(McpServer)
class McpServerAdmin(admin.ModelAdmin):
    list_display = [
        "name", "transport", "target", "enabled", "tool_count", "required_scope",
        "discovered_at", "last_error",
    ]  # fmt: skip
    list_filter = ["transport", "enabled"]
    search_fields = ["name", "command", "url"]
    readonly_fields = ["tool_list", "discovered_at", "last_error", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "enabled", "transport", "required_scope", "timeout_seconds"]}),
        ("stdio", {"fields": ["command", "args", "env"]}),
        ("streamable HTTP", {"fields": ["url", "headers"]}),
        (
            "Discovered tools",
            {"fields": ["tool_list", "discovered_at", "last_error", "created_at", "updated_at"]},
        ),
    ]
    actions = ["discover_tools", "enable", "disable"]

    # An MCP server runs a command on the workers (stdio) or receives agents' data (HTTP):
    # only superusers configure one, whatever model permissions staff users hold.
    def has_add_permission(self, request) -> bool:  # noqa: ANN001
        return request.user.is_active and request.user.is_superuser

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return request.user.is_active and request.user.is_superuser

    @admin.display(description="command / url")
    def target(self, obj: McpServer) -> str:
        if obj.transport == "stdio":
            return " ".join([obj.command, *map(str, obj.args)])
        return obj.url

    @admin.display(description="tools")
    def tool_count(self, obj: McpServer) -> int:
        return len(obj.tools)

    @admin.display(description="tools")
    def tool_list(self, obj: McpServer) -> str:
        if not obj.tools:
            return "none discovered yet"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li><code>mcp.{}.{}</code> — {}<details><summary>input schema</summary>"
                "<pre>{}</pre></details></li>",
                (
                    (obj.name, tool["name"], tool.get("description", ""), _schema(tool))
                    for tool in obj.tools
                ),
            ),
        )

    def save_model(self, request, obj, form, change) -> None:  # noqa: ANN001
        # Through the service so the change is validated and audited like the command's.
        server, _ = services.mcp_server_upsert(
            name=obj.name,
            actor=Actor.user(request.user),
            command=obj.command if obj.transport == "stdio" else "",
            args=obj.args,
            env=obj.env,
            url=obj.url if obj.transport == "http" else "",
            headers=obj.headers,
            required_scope=obj.required_scope or "",
            timeout_seconds=obj.timeout_seconds,
        )
        if not obj.enabled:
            services.mcp_server_set_enabled(
                server=server, enabled=False, actor=Actor.user(request.user)
            )
        obj.pk = server.pk

    @admin.action(description="Discover tools now", permissions=["change"])
    def discover_tools(self, request, queryset) -> None:  # noqa: ANN001
        actor = Actor.user(request.user)
        for server in queryset:
            try:
                services.mcp_server_discover(server=server, actor=actor)
            except ToolError as exc:
                self.message_user(request, f"{server.name}: {exc.message}", messages.ERROR)
            else:
                self.message_user(
                    request, f"{server.name}: {len(server.tools)} tool(s).", messages.SUCCESS
                )

    @admin.action(description="Enable", permissions=["change"])
    def enable(self, request, queryset) -> None:  # noqa: ANN001
        self._set_enabled(request, queryset.filter(enabled=False), True)

    @admin.action(description="Disable", permissions=["change"])
    def disable(self, request, queryset) -> None:  # noqa: ANN001
        self._set_enabled(request, queryset.filter(enabled=True), False)

    def _set_enabled(self, request, queryset, enabled: bool) -> None:  # noqa: ANN001
        actor = Actor.user(request.user)
        count = 0
        for server in queryset:
            services.mcp_server_set_enabled(server=server, enabled=enabled, actor=actor)
            count += 1
        verb = "Enabled" if enabled else "Disabled"
        self.message_user(request, f"{verb} {count} server(s).", messages.SUCCESS)
