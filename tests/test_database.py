"""Row loading shortcuts give exactly what the ORM gives."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection

from ordinaut.database import ModelColumns
from tasks.models import Task
from tests.factories import make_agent, make_task

pytestmark = pytest.mark.django_db

INSTANT = datetime(2025, 3, 30, 0, 59, 59, 987654, tzinfo=UTC)
TASK_BY_ID = "SELECT {} FROM tasks_task t WHERE id = %s"


@pytest.fixture
def task() -> Task:
    return make_task(make_agent()[0])


def test_timestamps_load_in_c_with_djangos_timezone(task):
    loader = connection.connection.adapters.get_loader(1184, 0)
    assert loader.__name__ == "UtcTimestamptzLoader"
    Task.objects.filter(pk=task.pk).update(created_at=INSTANT)
    loaded = Task.objects.get(pk=task.pk).created_at
    assert loaded == INSTANT
    assert loaded.tzinfo is UTC  # the very object Django attaches
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::timestamptz", ["2025-03-30 03:03:00.5+03"])
        (shifted,) = cursor.fetchone()
    assert shifted == datetime(2025, 3, 30, 0, 3, 0, 500000, tzinfo=UTC)
    assert shifted.tzinfo is UTC


def test_model_columns_build_the_instance_the_orm_builds(task):
    columns = ModelColumns(Task)
    with connection.cursor() as cursor:
        cursor.execute(TASK_BY_ID.format(columns.sql("t")), [task.pk])
        built = columns.instance(cursor.fetchone())
    loaded = Task.objects.get(pk=task.pk)
    for field in Task._meta.concrete_fields:
        assert getattr(built, field.attname) == getattr(loaded, field.attname), field.name
    assert isinstance(built.payload, dict)
    assert built._state.adding is False
    assert built._state.db == "default"
