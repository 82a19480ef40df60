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

        from agents.signals import agent_halted, agent_restored
        from tasks.services import agent_work_halt, agent_work_restore

        # The kill switch is an agent use case; what it does to tasks is decided here.
        agent_halted.connect(agent_work_halt, dispatch_uid="tasks.agent_work_halt")
        agent_restored.connect(agent_work_restore, dispatch_uid="tasks.agent_work_restore")

        from django.contrib import admin

        # The admin index is the operator console's dashboard (tasks/console.py).
        admin.site.index_template = "admin/ordinaut_index.html"

        for check in (check_scheduler, check_workers):
            if check not in CHECKS:
                CHECKS.append(check)
