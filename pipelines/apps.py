from django.apps import AppConfig


class PipelinesConfig(AppConfig):
    name = "pipelines"
    verbose_name = "Pipelines"

    def ready(self) -> None:
        from pipelines.secrets import check_secrets

        check_secrets()
