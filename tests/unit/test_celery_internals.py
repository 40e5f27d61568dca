"""The Celery and Kombu internals we rely on still exist with the shape we use (no broker, no database).

A Celery or Kombu release may rename or drop anything private without notice. Each check here names
the internal and the module of ours that relies on it, so an upgrade that breaks one fails this fast
test with that name instead of a worker test failing obscurely. The list, with what breaks without
each, is in CONTRIBUTING.md ("Celery and Kombu internals we rely on"); a test below keeps the two equal.

Kombu's virtual-transport internals are checked on its in-memory transport (``memory://``), which is
the same ``kombu.transport.virtual`` base classes ours subclasses, built in this process.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import celery
import kombu
import pytest
from celery import Celery, chain, chord, group
from kombu.transport import virtual

import celery_durable  # noqa: F401  (registers the URL schemes, wraps Task's publishing methods)
from celery_durable import compat
from celery_durable.headers import STEP_HEADER

CELERY_LINE = tuple(celery.VERSION[:2])


def _app() -> Celery:
    app = Celery(f"internals_{uuid.uuid4().hex[:8]}", set_as_current=False)
    app.conf.update(accept_content=["json"])
    return app


def _memory_channel() -> virtual.Channel:
    return kombu.Connection("memory://").channel()


def _consume(channel: virtual.Channel, queue: str, received: list) -> str:
    tag = f"tag-{queue}"
    channel.basic_consume(queue, False, received.append, tag)
    return tag


def _raw_message(channel: virtual.Channel, queue: str) -> dict:
    """A message as a virtual channel stores it, augmented as on publish."""
    message = channel.prepare_message('{"x": 1}', content_type="application/json", content_encoding="utf-8")
    channel._inplace_augment_message(message, "", queue)
    return message


def _params(function: Callable) -> list[str]:
    return list(inspect.signature(function).parameters)


# -- Kombu: the virtual transport (celery_durable/transport/) -------------------------------------------


def check_channel_active_queues() -> None:
    channel = _memory_channel()
    tag = _consume(channel, "q1", [])
    assert channel._active_queues == ["q1"], "basic_consume no longer lists the queue in _active_queues"
    channel.basic_cancel(tag)
    assert channel._active_queues == [], "basic_cancel no longer removes the queue from _active_queues"


def check_channel_consumers() -> None:
    channel = _memory_channel()
    tag = _consume(channel, "q1", [])
    assert channel._consumers == {tag}, "basic_consume no longer records the consumer tag in _consumers"
    channel.basic_cancel(tag)
    assert not channel._consumers


def check_channel_tag_to_queue() -> None:
    channel = _memory_channel()
    tag = _consume(channel, "q1", [])
    assert channel._tag_to_queue == {tag: "q1"}


def check_channel_inplace_augment_message() -> None:
    channel = _memory_channel()
    message = _raw_message(channel, "q1")
    props = message["properties"]
    assert props["delivery_tag"] and props["body_encoding"] == channel.body_encoding
    assert props["delivery_info"]["routing_key"] == "q1" and props["delivery_info"]["exchange"] == ""


def check_channel_queue_hooks() -> None:
    """Kombu's own queue_declare and queue_purge still reach the hooks our Channel overrides."""
    calls: list[str] = []

    class Recording(type(_memory_channel())):  # type: ignore[misc]
        def _new_queue(self, queue, **kwargs):
            calls.append("_new_queue")
            return super()._new_queue(queue, **kwargs)

        def _has_queue(self, queue, **kwargs):
            calls.append("_has_queue")
            return True

        def _size(self, queue):
            calls.append("_size")
            return 0

        def _purge(self, queue):
            calls.append("_purge")
            return 0

    channel = Recording(kombu.Connection("memory://").transport)
    channel.queue_declare("q1", durable=True, auto_delete=False, arguments={"x-expires": 1})
    assert calls == ["_new_queue", "_size"], calls
    calls.clear()
    channel.queue_declare("q1", passive=True)
    assert calls == ["_has_queue", "_new_queue", "_size"], calls  # a passive declare of a queue that exists too
    calls.clear()
    channel.queue_purge("q1")
    assert calls == ["_purge"], calls


def check_transport_callbacks() -> None:
    channel = _memory_channel()
    _consume(channel, "q1", [])
    assert callable(channel.connection._callbacks["q1"]), "basic_consume no longer registers Transport._callbacks"


def check_transport_deliver() -> None:
    channel = _memory_channel()
    received: list = []
    _consume(channel, "q1", received)
    raw = _raw_message(channel, "q1")
    channel.connection._deliver(raw, "q1")
    assert len(received) == 1 and received[0].decode() == {"x": 1}
    assert received[0].delivery_tag == raw["properties"]["delivery_tag"]
    assert channel.qos.get(received[0].delivery_tag) is received[0], "a delivered message is no longer held by QoS"


def check_qos_quick_ack_flush_delivered() -> None:
    channel = _memory_channel()
    received: list = []
    _consume(channel, "q1", received)
    channel.connection._deliver(_raw_message(channel, "q1"), "q1")
    qos, tag = channel.qos, received[0].delivery_tag
    assert list(qos._delivered) == [tag]
    qos._quick_ack(tag)
    qos._flush()
    assert tag not in qos._delivered, "_quick_ack then _flush no longer forgets a delivered message"
    qos._delivered.clear()


def check_qos_can_consume_max_estimate() -> None:
    channel = _memory_channel()
    received: list = []
    _consume(channel, "q1", received)
    assert channel.qos.can_consume_max_estimate() is None, "no prefetch limit must still mean None (no limit)"
    channel.basic_qos(prefetch_count=3)
    channel.connection._deliver(_raw_message(channel, "q1"), "q1")
    assert channel.qos.can_consume_max_estimate() == 2
    assert channel.qos.prefetch_count == 3


def check_message_decode_hook() -> None:
    """Kombu's Message.decode() goes through _decode(), which our Message overrides to dead-letter."""
    channel = _memory_channel()
    seen: list = []

    class Recording(channel.Message):  # type: ignore[misc,name-defined]
        def _decode(self):
            seen.append(self.delivery_tag)
            return super()._decode()

    raw = _raw_message(channel, "q1")
    assert Recording(raw, channel=channel).decode() == {"x": 1} and seen == [raw["properties"]["delivery_tag"]]


def check_message_bad_body_raises_value_error() -> None:
    """Our Message turns this ValueError into UndecodableBody (then a dead letter) instead of a crash."""
    channel = _memory_channel()
    raw = _raw_message(channel, "q1")
    raw["body"] = "abc"  # not base64
    with pytest.raises(ValueError):
        channel.Message(raw, channel=channel)


def check_to_rabbitmq_queue_arguments() -> None:
    from kombu.transport.base import to_rabbitmq_queue_arguments

    found = to_rabbitmq_queue_arguments({}, expires=10, message_ttl=2, max_priority=9)
    assert found == {"x-expires": 10000, "x-message-ttl": 2000, "x-max-priority": 9}


def check_topic_exchange_key_to_pattern() -> None:
    from kombu.transport.virtual.exchange import TopicExchange

    pattern = TopicExchange(None).key_to_pattern("orders.*.eu.#")
    assert re.match(pattern, "orders.paid.eu.x.y") and not re.match(pattern, "orders.paid.us")


def check_transport_aliases() -> None:
    from kombu.transport import TRANSPORT_ALIASES, resolve_transport

    assert TRANSPORT_ALIASES["postgresql"] == "celery_durable.transport:Transport"
    from celery_durable.transport import Transport

    assert resolve_transport("postgresql") is Transport and resolve_transport("postgres") is Transport


def check_redis_unacked_restore() -> None:
    """`durable migrate-from redis://` gives back Kombu's unacked messages through its Redis QoS."""
    from kombu.transport import redis

    assert callable(redis.Channel.conn_or_acquire)
    assert inspect.getattr_static(redis.QoS, "unacked_index_key", None) is not None
    assert _params(redis.QoS.restore_by_tag)[:3] == ["self", "tag", "client"]
    assert _params(redis.Channel._size) == ["self", "queue"]


# -- Celery: tasks and the worker (celery_durable/workflow/, behalf.py, transport/keeper.py) --------------


def _traced_app():
    app = _app()
    calls: list = []

    @app.task(name="shop.add", shared=False)
    def add(x, y):
        calls.append((x, y))
        return x + y

    return app, add, calls


def check_task_trace_cache() -> None:
    """The worker caches the tracer (built around ``task.run``) in ``task.__trace__``, rebuilt when None."""
    from celery.app.task import Task
    from celery.app.trace import trace_task

    assert "__trace__" in vars(Task) and Task.__trace__ is None
    app, add, calls = _traced_app()
    assert trace_task(add, "id-1", (1, 2), {}, request={}, app=app).retval == 3
    assert add.__trace__ is not None, "trace_task no longer caches the tracer in task.__trace__"
    add.run = lambda x, y: x * y  # what runner._wrap does, then it resets __trace__
    assert trace_task(add, "id-2", (2, 5), {}, request={}, app=app).retval == 7  # the cached tracer: the old run
    add.__trace__ = None
    assert trace_task(add, "id-3", (2, 5), {}, request={}, app=app).retval == 10


def check_task_run_wrapped_and_request_headers() -> None:
    """A tracer rebuilt after our wrapping runs the wrapper, which finds the step header on ``task.request``."""
    from celery.app.trace import trace_task

    from celery_durable.exceptions import WorkflowError
    from celery_durable.workflow import runner

    app, add, calls = _traced_app()
    trace_task(add, "id-1", (1, 2), {}, request={}, app=app)
    runner._wrap(add)
    assert add.__trace__ is None
    assert trace_task(add, "id-2", (1, 2), {}, request={}, app=app).retval == 3  # not a step: straight through
    # A step: the wrapper reads the header from task.request and goes for the workflow store (this app has none).
    traced = trace_task(add, "id-3", (1, 2), {}, request={STEP_HEADER: {"w": "x", "p": "0"}}, app=app)
    assert isinstance(traced.retval.exception, WorkflowError), traced.retval
    assert calls == [(1, 2), (1, 2)]


def check_task_publishing_methods() -> None:
    """behalf.install() wraps these: Celery's publishes on a task's behalf must still go through them."""
    from celery.app.task import Task

    from celery_durable import behalf

    for name in behalf.METHODS:
        method = getattr(Task, name)
        assert getattr(method, "_celery_durable_on_behalf", False), f"Task.{name} is not wrapped"
    assert _params(Task.retry)[:3] == ["self", "args", "kwargs"]
    assert _params(Task.replace) == ["self", "sig"]
    assert _params(Task.add_to_chord)[:2] == ["self", "sig"]


def check_django_task_on_commit() -> None:
    assert compat.HAS_DJANGO_TASK == (CELERY_LINE >= (5, 4))
    if compat.HAS_DJANGO_TASK:
        pytest.importorskip("django")
        task_cls = compat.django_task()
        for name in ("delay_on_commit", "apply_async_on_commit"):
            assert callable(getattr(task_cls, name)), f"DjangoTask.{name}"


def _request(app: Celery, task, headers: dict):
    from celery.worker.request import Request
    from kombu.message import Message
    from kombu.serialization import dumps

    sent = app.amqp.as_task_v2("id-1", task.name, args=(1, 2), kwargs={})
    content_type, content_encoding, body = dumps(sent.body, "json")
    message = Message(body=body, content_type=content_type, content_encoding=content_encoding,
                      headers={**sent.headers, **headers}, delivery_tag="tag-1", delivery_info={})
    return Request(message, app=app, task=task), message


def check_request_message() -> None:
    from celery.worker import state

    app, add, _ = _traced_app()
    request, message = _request(app, add, {})
    assert request._message is message and request._message.delivery_tag == "tag-1"
    assert isinstance(state.requests, dict)


def check_request_dict_headers() -> None:
    app, add, _ = _traced_app()
    request, _ = _request(app, add, {STEP_HEADER: {"w": "x", "p": "0"}})
    assert request.request_dict[STEP_HEADER] == {"w": "x", "p": "0"} and request.id == "id-1"


def check_canvas_classes() -> None:
    from celery.canvas import _chain, _chord

    app = _app()
    a, b = app.signature("shop.a"), app.signature("shop.b")
    built_chain, built_chord = chain(a, b), chord([a], b)
    assert isinstance(built_chain, _chain) and [s.task for s in built_chain.tasks] == ["shop.a", "shop.b"]
    assert isinstance(built_chord, _chord) and built_chord.body.task == "shop.b"
    assert [s.task for s in built_chord.tasks] == ["shop.a"]
    assert not isinstance(group(a, b), _chain)


def check_regen() -> None:
    from celery.utils.functional import _regen

    lazy = _regen(iter([1, 2]))
    assert isinstance(lazy, _regen) and list(lazy) == [1, 2]


def check_amqp_retry_publish() -> None:
    from celery.app.amqp import AMQP

    retry = getattr(AMQP, "_retry_publish", None)
    if CELERY_LINE >= (5, 7):
        assert retry is not None, "Celery 5.7+ lost AMQP._retry_publish: compat.publish_callback publishes directly"
        params = inspect.signature(retry).parameters
        assert list(params)[:2] == ["self", "publish"]
        assert {p.kind for p in list(params.values())[2:]} == {inspect.Parameter.VAR_POSITIONAL,
                                                               inspect.Parameter.VAR_KEYWORD}
    sent: list = []
    compat.publish_callback(_app(), lambda *args, **kwargs: sent.append((args, kwargs)), 1, k=2)
    assert sent == [((1,), {"k": 2})]


def check_decompress_payload() -> None:
    if CELERY_LINE >= (5, 7):
        from celery.backends import base

        assert compat.decompress_payload is base.decompress_payload
        assert base.COMPRESSED_PAYLOAD_MAGIC == compat.COMPRESSED_PAYLOAD_MAGIC
    assert compat.decompress_payload(b"plain") == b"plain"


def check_state_active_apps() -> None:
    from celery import _state

    app = _app()
    assert app in list(_state._get_active_apps())
    assert callable(_state.get_current_app) and hasattr(_state, "default_app")


# -- Celery: the result backend (celery_durable/backend/) -------------------------------------------------


def _backend():
    from celery_durable.backend import PostgresBackend

    # No connection is made until a result is stored or read: none is, below.
    return PostgresBackend(_app(), url="postgresql://nobody@127.0.0.1:1/none")


def check_backend_hooks() -> None:
    """Celery's public backend methods still call the hooks we override, with arguments our overrides take."""
    from celery_durable.backend import PostgresBackend

    backend = _backend()
    called: list[str] = []

    def recorder(name: str, returns):
        ours = inspect.signature(getattr(PostgresBackend, name))

        def hook(*args, **kwargs):
            ours.bind(backend, *args, **kwargs)  # raises TypeError when Celery's call no longer fits ours
            called.append(name)
            return returns
        return hook

    group_result = backend.app.GroupResult("g1", [])
    for name, returns in (("_store_result", None), ("_get_task_meta_for", {"status": "PENDING", "result": None}),
                          ("_forget", None), ("_save_group", group_result), ("_restore_group", None),
                          ("_delete_group", None), ("_get_metas", {})):
        setattr(backend, name, recorder(name, returns))
    backend.store_result("t1", 1, "SUCCESS", request=None)
    backend.get_task_meta("t1", cache=False)
    backend.forget("t1")
    backend.save_group("g1", group_result)
    backend.get_group_meta("g1", cache=False)
    backend.delete_group("g1")
    assert called == ["_store_result", "_get_task_meta_for", "_forget", "_save_group", "_restore_group",
                      "_delete_group"]


def check_backend_get_result_meta() -> None:
    meta = _backend()._get_result_meta(result=3, state="SUCCESS", traceback=None, request=None)
    assert meta["status"] == "SUCCESS" and meta["result"] == 3 and "date_done" in meta


def check_backend_cache_and_pending() -> None:
    backend = _backend()
    backend._cache["t1"] = {"status": "SUCCESS"}  # an LRU cache, or a dict that keeps nothing (result_cache_max)
    assert backend._cache.get("t1") in (None, {"status": "SUCCESS"})
    consumer = backend.result_consumer
    assert consumer._pending_results is backend._pending_results
    assert consumer._pending_messages is backend._pending_messages


def check_result_consumer() -> None:
    from celery.backends.asynchronous import AsyncBackendMixin, BaseResultConsumer, greenletDrainer

    assert _params(BaseResultConsumer.__init__) == ["self", "backend", "app", "accept", "pending_results",
                                                     "pending_messages"]
    for name in ("drain_events_until", "on_wait_for_pending", "on_state_change", "_wait_for_pending"):
        assert callable(getattr(BaseResultConsumer, name)), f"BaseResultConsumer.{name}"
    assert {"result", "timeout", "on_interval", "on_message"} <= set(_params(BaseResultConsumer._wait_for_pending))
    assert "result_consumer._wait_for_pending(" in inspect.getsource(AsyncBackendMixin._wait_for_pending)
    assert isinstance(greenletDrainer, type)
    assert _backend().result_consumer.drainer is not None


def check_async_result_cache() -> None:
    from celery.result import AsyncResult

    result = AsyncResult("t1", app=_app())
    assert result._cache is None, "a fresh AsyncResult must have _cache None (not known to be ready)"
    result._maybe_set_cache({"status": "SUCCESS", "result": 1, "traceback": None, "children": []})
    assert result._cache["result"] == 1


def check_mark_as_failure_signature() -> None:
    from celery.backends.base import Backend

    assert _params(Backend.mark_as_failure) == ["self", "task_id", "exc", "traceback", "request", "store_result",
                                                "call_errbacks", "state"]


# -- Celery: schedules (celery_durable/beat/schedules.py) -------------------------------------------------


def check_crontab_orig_fields() -> None:
    from celery.schedules import crontab

    cron = crontab(minute="*/15", hour="4", day_of_week="mon-fri", day_of_month="1-7", month_of_year="*/2")
    assert (cron._orig_minute, cron._orig_hour, cron._orig_day_of_week, cron._orig_day_of_month,
            cron._orig_month_of_year) == ("*/15", "4", "mon-fri", "1-7", "*/2")


def check_schedule_tz_and_nowfun() -> None:
    from datetime import datetime

    from celery.schedules import crontab

    cron = crontab(minute="0", app=_app())
    cron.tz = ZoneInfo("Asia/Tokyo")  # an instance's own zone (ZonedCrontab): a cached property, not a property
    assert cron.tz == ZoneInfo("Asia/Tokyo")
    pinned = datetime(2024, 1, 1, 12, 30, tzinfo=ZoneInfo("Asia/Tokyo"))
    cron.nowfun = lambda: pinned
    assert cron.now() == pinned


# -- the list ------------------------------------------------------------------------------------------

#: (internal, our module that relies on it, the check). CONTRIBUTING.md's table lists the same internals.
INTERNALS: list[tuple[str, str, Callable[[], None]]] = [
    ("kombu virtual.Channel._active_queues", "transport/delivery.py", check_channel_active_queues),
    ("kombu virtual.Channel._consumers", "transport/delivery.py", check_channel_consumers),
    ("kombu virtual.Channel._tag_to_queue", "transport/channel.py", check_channel_tag_to_queue),
    ("kombu virtual.Channel._inplace_augment_message", "transport/channel.py", check_channel_inplace_augment_message),
    ("kombu virtual.Channel._new_queue/_has_queue/_size/_purge", "transport/channel.py", check_channel_queue_hooks),
    ("kombu virtual.Transport._callbacks", "transport/delivery.py", check_transport_callbacks),
    ("kombu virtual.Transport._deliver", "transport/delivery.py", check_transport_deliver),
    ("kombu virtual.QoS._quick_ack/_flush/_delivered", "transport/qos.py", check_qos_quick_ack_flush_delivered),
    ("kombu virtual.QoS.can_consume_max_estimate", "transport/delivery.py", check_qos_can_consume_max_estimate),
    ("kombu Message._decode", "transport/channel.py", check_message_decode_hook),
    ("kombu virtual.Message raises ValueError on a bad body", "transport/channel.py",
     check_message_bad_body_raises_value_error),
    ("kombu transport.base.to_rabbitmq_queue_arguments", "transport/channel.py", check_to_rabbitmq_queue_arguments),
    ("kombu TopicExchange.key_to_pattern", "transport/channel.py", check_topic_exchange_key_to_pattern),
    ("kombu transport.TRANSPORT_ALIASES", "__init__.py", check_transport_aliases),
    ("kombu redis QoS.restore_by_tag/unacked_index_key, Channel.conn_or_acquire/_size", "cli/migrate_from.py",
     check_redis_unacked_restore),
    ("celery Task.__trace__", "workflow/runner.py", check_task_trace_cache),
    ("celery tracer calls task.run; request keys on task.request", "workflow/runner.py",
     check_task_run_wrapped_and_request_headers),
    ("celery Task.retry/replace/add_to_chord", "behalf.py", check_task_publishing_methods),
    ("celery DjangoTask.delay_on_commit/apply_async_on_commit", "contrib/django/join.py",
     check_django_task_on_commit),
    ("celery Request._message, worker.state.requests", "transport/keeper.py", check_request_message),
    ("celery Request.request_dict", "workflow/held.py", check_request_dict_headers),
    ("celery canvas._chain/_chord", "workflow/canvas.py", check_canvas_classes),
    ("celery utils.functional._regen", "backend/chords.py", check_regen),
    ("celery AMQP._retry_publish", "compat.py", check_amqp_retry_publish),
    ("celery backends.base.decompress_payload", "compat.py", check_decompress_payload),
    ("celery _state._get_active_apps/get_current_app/default_app", "contrib/django/conf.py",
     check_state_active_apps),
    ("celery Backend._store_result/_get_task_meta_for/_forget/_save_group/_restore_group/_delete_group",
     "backend/backend.py", check_backend_hooks),
    ("celery Backend._get_result_meta", "backend/backend.py", check_backend_get_result_meta),
    ("celery Backend._cache/_pending_results/_pending_messages", "backend/backend.py",
     check_backend_cache_and_pending),
    ("celery BaseResultConsumer._wait_for_pending, greenletDrainer", "backend/consumer.py",
     check_result_consumer),
    ("celery AsyncResult._cache/_maybe_set_cache", "backend/consumer.py", check_async_result_cache),
    ("celery Backend.mark_as_failure signature", "backend/chain_failure.py", check_mark_as_failure_signature),
    ("celery crontab._orig_minute/_orig_hour/_orig_day_of_week/_orig_day_of_month/_orig_month_of_year",
     "beat/schedules.py", check_crontab_orig_fields),
    ("celery BaseSchedule.tz (cached property), nowfun", "beat/schedules.py", check_schedule_tz_and_nowfun),
]


@pytest.mark.parametrize("internal, ours, check", INTERNALS, ids=[f"{i} [{o}]" for i, o, _ in INTERNALS])
def test_internal_still_has_the_shape_we_use(internal, ours, check):
    """If this fails after a Celery or Kombu upgrade, ``celery_durable/<ours>`` needs that internal's new form."""
    assert (Path(celery_durable.__file__).parent / ours).exists()
    check()


def test_contributing_lists_every_internal():
    """CONTRIBUTING.md's table and this list name the same internals, each with the module that relies on it."""
    text = (Path(__file__).resolve().parents[2] / "CONTRIBUTING.md").read_text()
    section = text.split("## Celery and Kombu internals we rely on", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {(cells[1].strip(), cells[2].strip()) for cells in (row.split("|") for row in rows)}
    assert listed == {(f"`{internal}`", f"`{ours}`") for internal, ours, _ in INTERNALS}
