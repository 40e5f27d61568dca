"""``migrate-from URL``: move every waiting task message of a Redis or RabbitMQ broker into PostgreSQL.

Celery's ``celery migrate`` (``celery.contrib.migrate``) does the moving; this
adds what it misses when leaving Redis:

- the messages in Redis's *unacked* hash (prefetched or ETA tasks of a worker
  that was SIGKILLed; they would come back only after the visibility timeout,
  an hour by default) go back to their queues first, unless a worker still
  answers on the old broker (its held tasks would then run twice);
- every moved message is acked on the old broker after it committed here
  (``celery migrate`` without ``--ack-messages`` leaves the originals, which
  old workers would run again): the destination always publishes confirmed,
  whatever the app's ``confirm_publish`` (a pipelined publish returns before
  its commit, so its ack could outrun a crash or a refusal);
- a message the database refuses (a trigger raising, ``max_message_bytes``),
  or one whose exchange and routing key reach no queue here, is not acked: it
  stays on the old broker, each is named on stderr and in ``left_behind``, and
  the command exits with status 1 after moving the others;
- the destination is the app's database *and schema* (a plain URL cannot name
  a schema);
- progress on long moves, and a summary of what is left behind.

A crash between a message's commit here and its ack there duplicates that one
message (at least once); nothing is lost.
"""

from __future__ import annotations

from typing import Any

import click
import kombu
from celery import Celery
from celery.contrib.migrate import State, migrate_tasks, republish
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from .group import durable
from .output import emit, json_option
from .target import CommandError, Target, _is_postgres, with_target

#: Messages between two progress lines (``--progress-every``).
PROGRESS_EVERY_DEFAULT = 100


@durable.command("migrate-from")
@click.argument("source")
@click.option("-Q", "--queues", help="Comma-separated queues to move (default: the app's task queues).")
@click.option("--unacked/--no-unacked", default=True, show_default=True,
              help="Redis: first put the messages of the unacked hash back in their queues.")
@click.option("--force", is_flag=True,
              help="Restore the unacked hash even if workers still answer on the old broker.")
@click.option("-O", "--source-option", "source_options", multiple=True, metavar="KEY=VALUE",
              help="A transport option of the old broker, e.g. global_keyprefix=app: (repeatable).")
@click.option("--idle", default=1.0, show_default=True, type=float,
              help="Stop after this many seconds without a message.")
@click.option("--progress-every", default=PROGRESS_EVERY_DEFAULT, show_default=True, type=click.IntRange(min=1),
              help="Print a progress line on stderr after every this many moved messages.")
@json_option
@with_target
def migrate_from_cmd(target: Target, source: str, queues: str | None, unacked: bool, force: bool,
                     source_options: tuple[str, ...], idle: float, progress_every: int, as_json: bool) -> None:
    """Move the task messages waiting on SOURCE (redis://…, amqp://…) into this database."""
    app = target.app if target.app is not None else Celery("celery_durable_migrate", set_as_current=False)
    names = [q.strip() for q in (queues or "").split(",") if q.strip()] or sorted(app.amqp.queues)
    restored = 0
    options = dict(_option(text) for text in source_options)
    with kombu.Connection(source, transport_options=options) as old, _destination(target) as new:
        old.ensure_connection(max_retries=1)
        if unacked and old.transport.driver_type == "redis":
            if not force:
                _refuse_if_workers_answer(source, options)
            restored = _restore_redis_unacked(old)
            if restored:
                click.echo(f"restored {restored} unacked messages to their queues", err=True)

        state = State()
        mover = _Mover(progress_every, state)
        try:
            migrate_tasks(old, new, app=app, queues=",".join(names), migrate=mover, timeout=idle, state=state,
                          accept=list(app.conf.accept_content))
        except new.connection_errors as exc:
            raise CommandError(f"lost the database after moving {mover.moved} messages: {exc}; the rest stays on "
                               f"{_safe(source)} (run the command again)") from None
        finally:
            mover.give_back()
        left = {name: _size(old, name) for name in names}
    data = {"source": _safe(source), "destination": target.describe(), "schema": target.schema,
            "queues": names, "moved": mover.moved, "restored_unacked": restored, "left": left,
            "left_behind": [{"task_id": task_id, "reason": why} for task_id, why in mover.left_behind]}
    emit(as_json, data, lambda: f"moved {mover.moved} messages ({restored} from the unacked hash) from "
         f"{_safe(source)} to schema {target.schema!r} in {target.describe()}"
         + ("" if not any(left.values()) else f"; still waiting there: {left}"))
    if mover.left_behind:
        for task_id, why in mover.left_behind:
            click.echo(f"task {task_id} not moved, left on the old broker: {why}", err=True)
        raise CommandError(f"{len(mover.left_behind)} of {state.count} messages could not be moved and stay on "
                           f"{_safe(source)} (listed above)")


class _Mover:
    """Celery's migrate step, confirmed: a message is acked on the old broker only once it committed here.

    One that reaches no queue here, or that the database refuses, is left
    unacked while the move goes on (so it is not delivered again meanwhile),
    listed in ``left_behind``, and put back in its queue by :meth:`give_back`
    once the consumer stopped. A lost database raises (Kombu's connection
    errors): the rest stays too.
    """

    def __init__(self, progress_every: int, state: State) -> None:
        self.progress_every = progress_every
        #: Celery's count of the messages taken from the old broker, and its estimate of their total.
        self.state = state
        self.moved = 0
        #: (task id, why) of the messages left on the old broker.
        self.left_behind: list[tuple[str, str]] = []
        self._unacked: list[Any] = []
        self._routed: dict[tuple[str, str], bool] = {}

    def __call__(self, producer: kombu.Producer, body: Any, message: Any, queues: dict | None = None) -> None:
        info, queues = message.delivery_info, queues or {}
        exchange = queues.get(info["exchange"]) or info["exchange"]
        routing_key = queues.get(info["routing_key"]) or info["routing_key"]
        task_id = str(message.headers.get("id") or message.properties.get("correlation_id") or "?")
        if exchange and not self._routes(producer, exchange, routing_key):
            self._leave(message, task_id, f"routes to no queue here (exchange {exchange!r}, routing key "
                                          f"{routing_key!r}): declare its queue, or pass -Q with its name")
            return
        try:
            republish(producer, message, exchange=exchange, routing_key=routing_key)
        except producer.connection.connection_errors:
            raise
        except Exception as exc:  # noqa: BLE001 - refused here: it stays there, named
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._leave(message, task_id, f"refused by the database: {detail}")
            return
        message.ack()
        self.moved += 1
        if self.moved % self.progress_every == 0:  # on stderr: --json output stays clean
            click.echo(f"moved {self.moved}/{self.state.strtotal} messages", err=True)

    def give_back(self) -> None:
        """Put the messages left behind back in their queues on the old broker."""
        for message in self._unacked:
            message.reject(requeue=True)
        self._unacked = []

    def _leave(self, message: Any, task_id: str, why: str) -> None:
        self.left_behind.append((task_id, why))
        self._unacked.append(message)

    def _routes(self, producer: kombu.Producer, exchange: str, routing_key: str) -> bool:
        """Whether ``exchange``/``routing_key`` reach a queue here (the bindings do not change during a move)."""
        key = (exchange, routing_key)
        if key not in self._routed:
            db = producer.channel.db
            self._routed[key] = bool(db.fetchall("binding_route", exchange=exchange, routing_key=routing_key))
        return self._routed[key]


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--source-option")
    return key, value


def _destination(target: Target) -> kombu.Connection:
    """The app's PostgreSQL broker connection, or one on --url with the target's schema; confirmed publishes."""
    app = target.app
    if app is not None and _is_postgres((app.conf.broker_url or "").split(";", 1)[0]):
        return app.connection_for_write(transport_options={"confirm_publish": True})
    return kombu.Connection(target.url(), transport_options={"schema": target.schema, "confirm_publish": True})


def _refuse_if_workers_answer(source: str, options: dict) -> None:
    """A live worker holds its prefetched and ETA tasks in the unacked hash: restoring them runs them twice.

    An app of its own: ``control.ping(connection=…)`` would still publish through the app's producer pool.
    """
    probe = Celery("celery_durable_migrate_probe", broker=source, set_as_current=False)
    probe.conf.broker_transport_options = options
    try:
        replies = probe.control.ping(timeout=1.0)
    finally:
        probe.close()
    if replies:
        nodes = ", ".join(sorted(name for reply in replies for name in reply))
        raise CommandError(f"workers still consume from the old broker ({nodes}): stop them first (a warm "
                           "shutdown gives their held tasks back), or pass --no-unacked, or --force")


def _restore_redis_unacked(old: kombu.Connection) -> int:
    """Put every message of Kombu's Redis unacked hash back in its queue; one transaction each."""
    channel: Any = old.default_channel  # Kombu's Redis channel (typed as the base class)
    qos = channel.qos
    with channel.conn_or_acquire() as client:
        # The index, not HKEYS: Kombu prefixes ZRANGE's key under global_keyprefix, not HKEYS'.
        tags = [bytes_to_str(tag) for tag in client.zrange(qos.unacked_index_key, 0, -1)]
        for tag in tags:
            qos.restore_by_tag(tag, client)
    return len(tags)


def _size(old: kombu.Connection, queue: str) -> int:
    """Messages waiting in ``queue`` on the old broker.

    Kombu's virtual transports (Redis) count with the channel's own size; their passive declare finds no
    queue under a ``global_keyprefix`` (so every queue counted as empty there).
    """
    channel = old.default_channel
    try:
        if isinstance(channel, virtual.Channel):
            return channel._size(queue)
        return channel.queue_declare(queue=queue, passive=True).message_count
    except old.channel_errors:
        return 0


def _safe(url: str) -> str:
    """The URL without its password."""
    return kombu.Connection(url).as_uri()
