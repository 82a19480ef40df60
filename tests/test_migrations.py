"""Migrations that move data keep it: run against rows written under the previous schema."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)


def migrate(*targets: tuple[str, str]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(list(targets))


def test_occurrences_get_their_tasks_agent():
    # The schema just before: agents as tasks 0010 found them, tasks before it.
    migrate(("agents", "0003_auth_change_notify"), ("tasks", "0009_event_publisher_triggered"))
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO agents_agent (id, name, description, scopes, webhook_url, is_active,"
                " created_at, updated_at) VALUES (gen_random_uuid(), 'old', '', '{}', '', true,"
                " now(), now()) RETURNING id"
            )
            agent_id = cursor.fetchone()[0]
            cursor.execute(
                "INSERT INTO tasks_task (id, title, description, created_by_id, schedule_kind,"
                " schedule_expr, timezone, payload, status, priority, dedupe_window_seconds,"
                " max_retries, backoff_strategy, misfire_policy, created_at, updated_at)"
                " VALUES (gen_random_uuid(), 't', '', %s, 'event', 'x', 'UTC',"
                " '{\"pipeline\": []}', 'active', 5, 0, 3, 'fixed', 'coalesce', now(), now())"
                " RETURNING id",
                [agent_id],
            )
            task_id = cursor.fetchone()[0]
            cursor.execute(
                "INSERT INTO tasks_occurrence (task_id, scheduled_for, run_at, priority, state,"
                " attempt, trigger, last_error, correlation_id, created_at, concurrency_key)"
                " VALUES (%s, now(), now(), 5, 'queued', 0, 'schedule', '', '', now(), 'k')",
                [task_id],
            )
        migrate(("tasks", "0010_occurrence_agent"))  # pulls in what it depends on only
        with connection.cursor() as cursor:
            cursor.execute("SELECT agent_id FROM tasks_occurrence WHERE task_id = %s", [task_id])
            assert cursor.fetchone()[0] == agent_id
    finally:
        migrate(*MigrationExecutor(connection).loader.graph.leaf_nodes())
