from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks and runs"

    def ready(self) -> None:
        from ordinaut.health import CHECKS
        from tasks.health import check_scheduler, check_workers

        for check in (check_scheduler, check_workers):
            if check not in CHECKS:
                CHECKS.append(check)
