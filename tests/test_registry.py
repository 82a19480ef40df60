"""Tools registered by the apps above pipelines/ (task.create) sit beside the built-ins."""

from __future__ import annotations

import dataclasses

import pytest

from pipelines import registry
from pipelines.tools import BUILTIN_TOOLS
from tasks import tools as task_tools


def test_the_tasks_app_registers_task_create_at_start_up():
    assert "task.create" not in BUILTIN_TOOLS  # pipelines/ does not import the tasks app
    assert registry.get_tool("task.create", refresh=False) is task_tools.TOOLS[0]


@pytest.mark.django_db
def test_registered_tools_are_listed_after_the_built_ins():
    names = [tool.name for tool in registry.list_tools()]
    assert names.index("task.create") >= len(BUILTIN_TOOLS)
    assert set(BUILTIN_TOOLS) <= set(names)


def test_registering_the_same_spec_again_is_a_no_op():
    registry.register_tools(task_tools.TOOLS)
    assert registry.get_tool("task.create", refresh=False) is task_tools.TOOLS[0]


def test_a_taken_name_or_an_mcp_name_is_refused():
    echo = BUILTIN_TOOLS["debug.echo"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register_tools([dataclasses.replace(echo)])
    with pytest.raises(ValueError, match="already registered"):
        registry.register_tools([dataclasses.replace(task_tools.TOOLS[0])])
    with pytest.raises(ValueError, match="belong to MCP servers"):
        registry.register_tools([dataclasses.replace(echo, name="mcp.fs.read")])
    assert registry.get_tool("debug.echo", refresh=False) is echo
