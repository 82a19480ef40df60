from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks and runs"

    def ready(self) -> None:
        from ordinaut.health import CHECKS
        from tasks.health import check_scheduler

        if check_scheduler not in CHECKS:
            CHECKS.append(check_scheduler)
