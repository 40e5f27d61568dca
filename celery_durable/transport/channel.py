"""A Kombu virtual channel whose queues, exchanges and bindings are rows.

Declarations write to shared tables so every process routes the same way;
publishing routes in SQL (direct, topic and fanout) and inserts one row per
target queue in one statement. Claiming and acking belong to the transport,
which batches them across channels.
"""

from __future__ import annotations

import logging

from kombu.exceptions import ChannelError
from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.transport.virtual.exchange import TopicExchange

from .qos import QoS

logger = logging.getLogger(__name__)

#: Longest queue, exchange or routing-key string accepted (NOTIFY payloads carry queue names).
NAME_MAX = 1000

_topic = TopicExchange(None)

#: Queue arguments we honour: x-expires (unused queues go), x-message-ttl (messages expire),
#: x-max-priority (a higher priority counts as the maximum).
HONOURED_ARGUMENTS = frozenset({"x-expires", "x-message-ttl", "x-max-priority"})
#: What happens instead of the RabbitMQ arguments we do not honour.
INSTEAD = {
    "x-max-length": "the queue has no length limit",
    "x-max-length-bytes": "the queue has no size limit",
    "x-overflow": "the queue has no length limit",
    "x-dead-letter-exchange": "rejected, too-often-delivered and undecodable messages go to the dead_letter table",
    "x-dead-letter-routing-key": "rejected, too-often-delivered and undecodable messages go to the dead_letter table",
}
_warned_arguments: set[tuple[str, str]] = set()


def broadcast_exchange(name: str) -> bool:
    """Celery's own broadcast exchanges: remote control (``<app>.pidbox``) and events and gossip (``celeryev``).

    Only their transient (auto-delete or non-durable) queues receive by NOTIFY alone, like Redis
    pub/sub: a listener that is not connected misses the message, which is what these are for.
    Every other queue gets rows, so a consumer that reconnects finds what was published meanwhile.
    """
    return name.endswith(".pidbox") or name == "celeryev"


def _check_name(kind: str, value: str | None) -> str:
    value = value or ""
    if len(value.encode()) > NAME_MAX:
        raise ChannelError(f"{kind} name longer than {NAME_MAX} bytes")
    if "\x00" in value:
        raise ChannelError(f"{kind} name contains a NUL character")
    return value


class UndecodableBody(Exception):
    """A claimed row whose body Kombu cannot even unwrap (e.g. bad base64): no Message can be built."""


class Message(virtual.Message):
    """Remembers a failed decode: consumers (Celery among them) ack what they cannot decode."""

    def __init__(self, payload, channel=None, **kwargs):
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
            raise UndecodableBody(f"undecodable message body: {type(exc).__name__}: {exc}"[:500]) from exc

    def _decode(self):
        try:
            return super()._decode()
        except Exception as exc:
            reason = f"undecodable message ({self.content_type}): {type(exc).__name__}: {exc}"[:500]
            self.channel.connection.leases.mark_undecodable(self.delivery_tag, reason)
            raise


class Channel(virtual.Channel):
    QoS = QoS
    Message = Message
    #: Fanout is routed in SQL by basic_publish; Kombu's per-process fallback is not used.
    supports_fanout = False

    def __init__(self, connection, **kwargs):
        super().__init__(connection, **kwargs)
        #: Claim on the next chance: set by consume, NOTIFY, safety poll, or a full batch.
        self.ready = True
        #: Messages asked of the fetcher thread and not yet delivered (one claim in flight at a time).
        self.claiming = 0
        self.no_ack_queues: set[str] = set()
        #: Auto-delete or non-durable queues.
        self.transient_queues: set[str] = set()
        #: Transient queues bound to Celery's broadcast exchanges: they get no rows, the safety poll skips them.
        self.notify_only_queues: set[str] = set()

    @property
    def db(self):
        return self.connection.db

    # -- declarations ---------------------------------------------------------

    def exchange_declare(self, exchange=None, type="direct", durable=False, auto_delete=False,
                         arguments=None, nowait=False, passive=False):
        type = type or "direct"
        exchange = _check_name("exchange", exchange or f"amq.{type}")
        if passive:
            if self.db.exchange_type(exchange) is None:
                raise ChannelError(
                    f"NOT_FOUND - no exchange {exchange!r}", (50, 10), "Channel.exchange_declare", "404"
                )
            return
        if type not in ("direct", "topic", "fanout"):
            raise ChannelError(f"exchange type {type!r} is not supported (direct, topic, fanout)")
        self.db.execute("exchange_declare", name=exchange, type=type, durable=bool(durable),
                        auto_delete=bool(auto_delete))
        self.state.exchanges.setdefault(exchange, {
            "type": type, "durable": durable, "auto_delete": auto_delete,
            "arguments": arguments or {}, "table": [],
        })

    def exchange_delete(self, exchange, if_unused=False, nowait=False):
        self.db.execute("exchange_delete", name=exchange)
        self.state.exchanges.pop(exchange, None)

    def prepare_queue_arguments(self, arguments, **kwargs):
        """``Queue(expires=…, message_ttl=…, max_priority=…)`` become ``x-`` arguments, as on RabbitMQ.

        (Kombu's virtual channels drop them, and Celery's reply and event queues set them this way.)
        """
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def _new_queue(self, queue, **kwargs):
        queue = _check_name("queue", queue)
        arguments = kwargs.get("arguments") or {}
        _warn_unhonoured(queue, arguments)
        if kwargs.get("auto_delete") or not kwargs.get("durable", True):
            self.transient_queues.add(queue)
        self.db.execute(
            "queue_declare",
            name=queue,
            durable=bool(kwargs.get("durable", True)),
            auto_delete=bool(kwargs.get("auto_delete", False)),
            expires_ms=_int(arguments.get("x-expires")),
            message_ttl_ms=_int(arguments.get("x-message-ttl")),
            max_priority=_int(arguments.get("x-max-priority")),
        )

    def _has_queue(self, queue, **kwargs):
        return self.db.fetchone("queue_exists", name=queue) is not None

    def queue_bind(self, queue, exchange=None, routing_key="", arguments=None, **kwargs):
        exchange = _check_name("exchange", exchange or "amq.direct")
        routing_key = _check_name("routing key", routing_key)
        if queue in self.transient_queues and broadcast_exchange(exchange):
            self.notify_only_queues.add(queue)
        self.db.execute("binding_declare", exchange=exchange, routing_key=routing_key,
                        queue=_check_name("queue", queue), pattern=_topic.key_to_pattern(routing_key))

    def queue_unbind(self, queue, exchange=None, routing_key="", arguments=None, **kwargs):
        self.db.execute("binding_delete", exchange=exchange or "amq.direct",
                        routing_key=routing_key or "", queue=queue)

    def queue_delete(self, queue, if_unused=False, if_empty=False, **kwargs):
        if if_empty and self._size(queue):
            return
        self.db.execute("queue_delete", name=queue)

    def list_bindings(self):
        return self.db.fetchall("binding_list")

    def _size(self, queue):
        self.connection.publisher.settle()  # this connection's pipelined publishes count
        return self.db.fetchone("message_count", queue=queue)[0]

    def _purge(self, queue):
        self.connection.publisher.settle()
        return self.db.fetchone("message_purge", queue=queue)[0]

    # -- publishing -----------------------------------------------------------

    def basic_publish(self, message, exchange, routing_key, **kwargs):
        self._inplace_augment_message(message, exchange, routing_key)
        self.connection.publisher.publish(message, exchange or "", routing_key or "")

    def _put(self, queue, message, **kwargs):
        self.connection.publisher.publish(message, "", queue)

    # -- consuming ------------------------------------------------------------

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        if no_ack:
            self.no_ack_queues.add(queue)
        self.ready = True
        self.connection.consumer_added(self)

    def basic_cancel(self, consumer_tag):
        queue = self._tag_to_queue.get(consumer_tag)
        super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self.no_ack_queues.discard(queue)

    def basic_get(self, queue, no_ack=False, **kwargs):
        self.connection.publisher.settle()
        payloads = self.connection.delivery.claim([queue], 1, whole=True)
        if not payloads:
            return None
        message = self.Message(payloads[0], channel=self)
        if no_ack:
            self.connection.leases.ack(message.delivery_tag)
        else:
            self.qos.append(message, message.delivery_tag)
        return message


def _warn_unhonoured(queue: str, arguments: dict) -> None:
    """Name the queue arguments we do not honour, once per queue and argument in this process."""
    ignored = []
    for name in arguments:
        if name in HONOURED_ARGUMENTS or (queue, name) in _warned_arguments:
            continue
        _warned_arguments.add((queue, name))
        ignored.append(f"{name} ({INSTEAD.get(name, 'ignored')})")
    if ignored:
        logger.warning("queue %r: celery_durable does not honour %s", queue, "; ".join(ignored))


def _int(value) -> int | None:
    return None if value is None else int(value)
