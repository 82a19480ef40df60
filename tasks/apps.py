from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks and runs"

    def ready(self) -> None:
        # Imported here: models must be loaded before these modules import them.
        from ordinaut.health import CHECKS
        from pipelines.registry import register_tools
        from tasks import tools
        from tasks.health import check_scheduler, check_workers

        register_tools(tools.TOOLS)

        for check in (check_scheduler, check_workers):
            if check not in CHECKS:
                CHECKS.append(check)
