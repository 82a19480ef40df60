"""Occurrences carry their task's agent: concurrency keys are per agent, and the claim can
pass over a paused agent's work without joining tasks."""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import Q


class Migration(migrations.Migration):
    # The backfill UPDATE queues deferred foreign-key checks, and PostgreSQL refuses to ALTER
    # a table with pending trigger events in the same transaction: each step commits alone.
    atomic = False

    dependencies = [
        ("agents", "0003_auth_change_notify"),
        ("tasks", "0009_event_publisher_triggered"),
    ]

    operations = [
        migrations.AddField(
            model_name="occurrence",
            name="agent",
            field=models.ForeignKey(
                null=True,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="agents.agent",
            ),
        ),
        migrations.RunSQL(
            "UPDATE tasks_occurrence AS o SET agent_id = t.created_by_id "
            "FROM tasks_task AS t WHERE t.id = o.task_id",
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="occurrence",
            name="agent",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="agents.agent",
            ),
        ),
        migrations.RemoveConstraint(
            model_name="occurrence",
            name="occurrence_one_leased_per_key",
        ),
        migrations.AddConstraint(
            model_name="occurrence",
            constraint=models.UniqueConstraint(
                condition=Q(("concurrency_key__isnull", False), ("state", "leased")),
                fields=("agent", "concurrency_key"),
                name="occurrence_one_leased_per_agent_key",
            ),
        ),
    ]
