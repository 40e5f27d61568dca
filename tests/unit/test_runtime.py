"""The process runtime: one object per kind and key, a fresh runtime in a forked child (no database needed)."""

from __future__ import annotations

import os
import threading

from celery_durable import runtime
from celery_durable.config import Settings


def test_an_object_is_made_once_per_kind_and_key_even_when_threads_race():
    rt = runtime.Runtime()
    made = []
    barrier = threading.Barrier(8)

    def make():
        made.append(1)
        return object()

    def ask():
        barrier.wait()
        got.append(rt.get("thing", "k", make))

    got: list[object] = []
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len({id(g) for g in got}) == 1
    assert rt.get("other", "k", object) is not got[0]
    assert [key for key, _ in rt.find("thing")] == ["k"]
    assert rt.take("thing") == [("k", got[0])] and rt.find("thing") == []


def test_settings_that_change_a_connection_keep_objects_apart_and_the_rest_do_not():
    base = runtime.connection_options(Settings())
    assert runtime.connection_options(Settings(max_result_bytes=1, schema="other", lease_seconds=3)) == base
    for changed in ({"pool_max_size": 2}, {"prepared_statements": False}, {"connect_timeout": 3}):
        assert runtime.connection_options(Settings(**changed)) != base, changed


def test_a_forked_child_starts_empty_and_keeps_its_parents_runtime():
    parent = runtime.current()
    thing = parent.get("thing", "k", object)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            mine = runtime.current()
            ok = (mine is not parent and mine.parent is parent and mine.pid == os.getpid()
                  and mine.find("thing") == [] and mine.get("thing", "k", object) is not thing)
            os.write(write, b"ok" if ok else b"wrong")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    assert os.read(read, 10) == b"ok"
    os.close(read)
    assert runtime.current() is parent and parent.get("thing", "k", object) is thing
