"""What agents/ tells the layers above when an agent's work must stop or may go on.

The kill switch is an agent use case (pause, resume, deactivate, reactivate: agents/
services.py) whose effect is on tasks and the queue, which live above agents/. The tasks
app connects receivers in its AppConfig.ready(), as it registers its tools; both signals
are sent inside the use case's transaction, so the agent row and its work change together.
"""

from __future__ import annotations

from django.dispatch import Signal

# Sent with agent=<Agent>, at=<datetime>: its work stops from `at` on.
agent_halted = Signal()
# Sent with agent=<Agent>, since=<datetime>, at=<datetime>: its work goes on from `at`; the
# schedule instants in (since, at] were missed.
agent_restored = Signal()
