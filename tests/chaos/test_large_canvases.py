"""A canvas of more than a thousand tasks, durable on ours while workers are SIGKILLed, gives what it means (and
what plain Celery gives on Redis), with no committed task run again and no row written twice.

The canvas is a random fan-out (tests/chaos/canvases.py's ``large_canvases``):
a group or chord of hundreds of small random canvases between two tasks, so
its groups count in parts (workflow/rows.py) and their members commit side by
side while workers die. One canvas in the bounded run, three in the long one
(CELERY_DURABLE_CHAOS_LONG=1).
"""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from celery_durable import durable
from celery_durable.testing.workers import start_worker

from .canvases import large_canvases, to_celery
from .modes import FIGURES as ALL_FIGURES
from .modes import limit, per_mode
from .test_canvas_property import APP, _slow, _violations, _wait_rows, stack  # noqa: F401  (the module's own stack)

pytestmark = pytest.mark.chaos

TASKS = 1000
FIGURES = ALL_FIGURES.setdefault("large canvases", {"canvases": 0, "tasks": 0, "kills": 0, "violations": 0,
                                                    "seconds": 0})


@limit(bounded=420, long=1800)
# The smallest canvas this strategy makes has a thousand tasks on purpose: Hypothesis's health check for a
# large smallest input says nothing here.
@settings(_slow, max_examples=per_mode(1, 3), phases=[Phase.explicit, Phase.reuse, Phase.generate],  # kills
          suppress_health_check=[*_slow.suppress_health_check, HealthCheck.large_base_example])
@given(canvas=large_canvases(TASKS))
def test_a_fan_out_of_a_thousand_tasks_survives_killed_workers(stack, budget, canvas):  # noqa: F811
    assert canvas.count() >= TASKS
    expected = stack.expected(canvas, budget)
    wf = durable(to_celery(canvas, stack.ours, pause=0.0)).apply_async()
    deadline = budget.deadline(per_mode(300, 600))
    next_kill = time.monotonic() + random.uniform(0.5, 1.5)
    while stack.q("SELECT status FROM {s}.workflow WHERE id = %s", wf.workflow_id) != [("succeeded",)]:
        assert time.monotonic() < deadline, "the large canvas did not finish"
        if time.monotonic() >= next_kill:
            victim = random.randrange(len(stack.durable_workers))
            stack.durable_workers[victim].kill()
            stack.durable_workers[victim] = start_worker(APP, env=stack.env)
            FIGURES["kills"] += 1
            next_kill = time.monotonic() + random.uniform(1, 3)
        time.sleep(0.1)
    assert wf.get(timeout=budget.timeout(60)) == expected
    _wait_rows(stack, budget, [wf.workflow_id], canvas.rows())
    found = _violations(stack, [wf.workflow_id])
    FIGURES["violations"] += len(found["reran"]) + len(found["doubled"])
    FIGURES["canvases"] += 1
    FIGURES["tasks"] += canvas.rows()
    FIGURES["seconds"] = round(budget.elapsed())
    assert found == {"reran": [], "doubled": []}
