"""A client process for the pipelined-publish tests: ``confirm_publish`` off, then does as it is told.

``python -m tests.apps.pipelined_client STEP ...`` with CELERY_DURABLE_URL and
CELERY_DURABLE_SCHEMA in the environment. Steps, in order:

- ``publish:N``: N ``t.echo.delay(i)`` calls (i counts on across steps), then prints ``published <total>``;
- ``flush``: ``celery_durable.flush_publishes()`` (waits for every answer), then prints ``flushed``;
- ``wait``: blocks until a line arrives on stdin;
- ``child:N``: a ``multiprocessing`` child (forked) makes N calls and returns (it ends in
  ``os._exit()``, past atexit), then prints ``child published <total>``.

After the last step the script returns: the interpreter exits without closing anything.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

import celery_durable
from tests.apps.transport_app import make_app


def _publish(echo, first: int, n: int) -> None:
    for i in range(first, first + n):
        echo.delay(i)


def main(steps: list[str]) -> None:
    app = make_app({**os.environ, "CELERY_DURABLE_CONFIRM_PUBLISH": "false"})
    echo = app.tasks["t.echo"]
    sent = 0
    for step in steps:
        if step.startswith("publish:"):
            for _ in range(int(step.split(":", 1)[1])):
                echo.delay(sent)
                sent += 1
            print(f"published {sent}", flush=True)
        elif step == "flush":
            celery_durable.flush_publishes()
            print("flushed", flush=True)
        elif step == "wait":
            sys.stdin.readline()
        elif step.startswith("child:"):
            n = int(step.split(":", 1)[1])
            child = multiprocessing.get_context("fork").Process(target=_publish, args=(echo, sent, n))
            child.start()
            child.join()
            sent += n
            print(f"child published {sent} (exit code {child.exitcode})", flush=True)
        else:
            raise SystemExit(f"unknown step {step!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
