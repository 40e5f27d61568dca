"""basic's app in a process that holds many open descriptors before it connects (a busy web or gevent process).

``CELERY_DURABLE_HOLD_FDS`` descriptors on ``/dev/null`` are opened at import,
so every connection the process makes afterwards gets a descriptor number past
``select()``'s limit (``FD_SETSIZE``, 1,024). ``run_checks`` is what the tests
ask of such a process: publish, wait for results, run a durable chain, publish
pipelined. ``python -m tests.apps.crowded`` runs the checks in a client process
of its own and prints ``ok <check>`` or ``FAIL <check>: <error>`` per check.
"""

from __future__ import annotations

import os
import resource
import sys

_held: list[int] = []


def hold(count: int) -> None:
    """Open ``count`` descriptors (raising the soft RLIMIT_NOFILE if it is too low), kept for the process's life."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    _held.extend(os.open(os.devnull, os.O_RDONLY) for _ in range(count))


hold(int(os.environ.get("CELERY_DURABLE_HOLD_FDS", "0")))

from celery import Celery  # noqa: E402  (after the descriptors: the point of this module)

import celery_durable  # noqa: E402
from tests.apps import basic  # noqa: E402

app = basic.app


def next_descriptor() -> int:
    """The number the next descriptor of this process gets."""
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def run_checks(env: dict) -> list[tuple[str, str | None]]:
    """Each check's name and its error (None when it worked), for a client configured from ``env``."""
    client = Celery("crowded-client")
    client.conf.update(basic.config(env))
    pipelined = Celery("crowded-pipelined")
    pipelined.conf.update(basic.config(env))
    pipelined.conf.broker_transport_options = {**pipelined.conf.broker_transport_options, "confirm_publish": False}
    add = client.signature("tests.apps.basic.add")
    record = client.signature("tests.apps.basic.record")

    def delay_get():
        assert add.delay(1, 2).get(timeout=60) == 3

    def result_wait():  # the result arrives while get() waits on its notification
        assert record.delay("crowded", sleep=1.0).get(timeout=60) == "crowded"

    def chain():
        flow = celery_durable.durable_chain(add.clone(args=(1, 2)), add.clone(args=(3,)), app=client)
        assert flow.apply_async().get(timeout=60) == 6

    def pipelined_publishes():
        results = [pipelined.signature("tests.apps.basic.add").delay(i, 1) for i in range(100)]
        celery_durable.flush_publishes()
        assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(100)]

    outcome = []
    for name, check in [("delay-get", delay_get), ("result-wait", result_wait), ("durable-chain", chain),
                        ("pipelined", pipelined_publishes)]:
        try:
            check()
            outcome.append((name, None))
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            outcome.append((name, f"{type(exc).__name__}: {str(exc)[:300]}"))
    client.close()
    pipelined.close()
    return outcome


if __name__ == "__main__":
    print(f"next descriptor {next_descriptor()}", flush=True)
    for name, error in run_checks(dict(os.environ)):
        print(f"ok {name}" if error is None else f"FAIL {name}: {error}", flush=True)
    sys.exit(0)
