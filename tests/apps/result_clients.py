"""A client process of the result-listening tests: it publishes, maybe waits, and reports what the server sent it.

    python -m tests.apps.result_clients URL SCHEMA BROKER QUEUE COUNT SIZE publish|wait

Sends COUNT ``results.big(SIZE)`` tasks and prints ``sent``; in ``wait`` mode it
then ``get()``s each and prints ``done``. It then idles until a line arrives
on stdin, reads every notification the server sent to any of its database
connections (found through the garbage collector, so this works whatever the
backend's internals are), and prints one JSON line: notifications, payload
bytes, and how many named this process's own tasks.
"""

from __future__ import annotations

import gc
import json
import sys

import psycopg

from celery_durable.backend.notify import parse
from tests.apps.results import make_app

_received: list[str] = []
_original_notifies = psycopg.Connection.notifies


def _counting_notifies(self, *args, **kwargs):
    """psycopg's own notifies(), recording each payload it yields (a pass-through)."""
    for note in _original_notifies(self, *args, **kwargs):
        _received.append(note.payload)
        yield note


def _drain_all() -> None:
    """Read what the server sent to every open connection of this process, until it stays quiet."""
    conns = [o for o in gc.get_objects() if isinstance(o, psycopg.Connection) and not o.closed]
    quiet = False
    while not quiet:
        quiet = True
        for conn in conns:
            try:
                if list(conn.notifies(timeout=0.3)):
                    quiet = False
            except psycopg.Error:
                pass


def main() -> None:
    url, schema, broker, queue, count, size, mode = sys.argv[1:8]
    psycopg.Connection.notifies = _counting_notifies
    app = make_app(url, schema, broker, queue)
    big = app.tasks["results.big"]
    results = [big.delay(int(size)) for _ in range(int(count))]
    own = {r.id for r in results}
    print("sent", flush=True)
    if mode == "wait":
        for r in results:
            r.get(timeout=120)
        print("done", flush=True)
    sys.stdin.readline()
    _drain_all()
    ids = [parse(p)[0] for p in _received]
    print(json.dumps({
        "notifications": len(_received),
        "bytes": sum(len(p.encode()) for p in _received),
        "own": sum(1 for i in ids if i in own),
    }), flush=True)


if __name__ == "__main__":
    main()
