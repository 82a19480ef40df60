from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.contrib.admin.apps import SimpleAdminConfig
from django.contrib.admin.checks import check_admin_app, check_dependencies
from django.core import checks


class AdminConfig(SimpleAdminConfig):
    """The admin, without importing every app's admin module at start-up.

    Django's AdminConfig autodiscovers in ready(): a fifth of a worker's or scheduler's
    start-up, for registrations only the web uses. Here ordinaut/urls.py autodiscovers,
    so every process that serves the admin has them.
    """

    def ready(self) -> None:
        # SimpleAdminConfig.ready(), with the app check discovering first: checks run in no
        # set order, and without it `manage.py check` could check no ModelAdmin at all.
        checks.register(check_dependencies, checks.Tags.admin)
        checks.register(_check_admin_app, checks.Tags.admin)


def _check_admin_app(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.contrib import admin

    admin.autodiscover()
    return check_admin_app(app_configs, **kwargs)


class OrdinautConfig(AppConfig):
    name = "ordinaut"
    verbose_name = "Ordinaut"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from ordinaut.database import use_fast_timestamptz_loader

        connection_created.connect(use_fast_timestamptz_loader, dispatch_uid="fast-timestamptz")
        # Development without DATABASE_URL/REDIS_URL: make sure our own servers under var/
        # run before anything connects. Settings never embed servers with DEBUG off.
        if settings.EMBEDDED_POSTGRES or settings.EMBEDDED_REDIS:
            from ordinaut.embedded import ensure_dev_servers

            ensure_dev_servers(
                settings.VAR_DIR,
                postgres=settings.EMBEDDED_POSTGRES,
                redis=settings.EMBEDDED_REDIS,
            )
