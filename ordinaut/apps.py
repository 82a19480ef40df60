from django.apps import AppConfig
from django.conf import settings


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
