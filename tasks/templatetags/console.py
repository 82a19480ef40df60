"""Template tags of the operator console: the dashboard block and readable values."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone

from tasks import console

register = template.Library()


@register.inclusion_tag("admin/console/dashboard.html", takes_context=True)
def console_dashboard(context: template.Context) -> dict[str, Any]:
    """The dashboard above the admin index's app list."""
    request = context["request"]
    return {
        **console.dashboard(),
        "csrf_token": context.get("csrf_token"),
        "can_decide": request.user.has_perm("tasks.decide_approval"),
        "can_rerun": request.user.has_perm("tasks.change_occurrence"),
    }


@register.filter
def in_console_zone(value: datetime | None) -> str:
    """A time in CONSOLE_TIME_ZONE with the zone named: "2026-12-03 14:05:09 UTC"."""
    if value is None:
        return "—"
    local = value.astimezone(console.console_zone())
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


@register.filter
def ago(value: datetime | None) -> str:
    """ "12 s late" / "in 40 s" relative to now."""
    return console.lateness_in_words(value, timezone.now()) if value else "—"


@register.filter
def pretty_json(value: Any) -> str:
    """Indented JSON for a <pre> block (escaped by the template)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


@register.filter
def iso_time(value: str | None) -> str:
    """An ISO timestamp from a step record as a time of day in CONSOLE_TIME_ZONE."""
    if not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return str(value)
    return moment.astimezone(console.console_zone()).strftime("%H:%M:%S.%f")[:-3]


@register.filter
def duration(seconds: float | None) -> str:
    return "—" if seconds is None else console.seconds_in_words(seconds)
