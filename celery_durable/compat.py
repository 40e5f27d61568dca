"""Every difference between the Celery and Kombu lines we support, in one place.

The rest of the package imports from here whatever one of those lines lacks or spells
differently, and checks no version itself. Supported: Celery 5.3 to 5.7, each with the Kombu of
its own line (docs/reference/supported-versions.md; ``python -m tests.support.matrix`` tests each line).

Older lines than 5.3 are refused when the package is imported, naming the versions found.

What differs, per line:

- ``decompress_payload`` (``celery.backends.base``): Celery 5.7 added ``result_compression``,
  which prefixes a stored result with a marker and the compression's name. Before 5.7 Celery
  compresses no result; our copy below still reads one a 5.7 worker wrote (a rolling upgrade).
- ``AMQP._retry_publish`` (the chord body's publish): Celery 5.7 retries each callback message on
  its own under its retry policy; before 5.7 the body is published directly, as Celery's own
  backends of those lines do (:func:`publish_callback`).
- ``celery.contrib.django.task.DjangoTask`` (``delay_on_commit``, ``apply_async_on_commit``): from
  Celery 5.4. On 5.3 it is None: our Django app still makes publishes inside ``atomic()`` join the
  transaction; those two methods do not exist (:func:`django_task`, :data:`DJANGO_TASK_CLS`).
- Crontab arithmetic across a DST change (``celery.schedules.crontab``, ``celery.utils.time.remaining``):
  from Celery 5.5 a crontab's next run is the same whichever day it is asked and time is
  subtracted in UTC. Before, a run in the hour a spring-forward night skips can come out an hour
  early for our beat (which asks Celery for due times) where Celery's own beat sends it an hour
  late, so that night such an entry can run twice (:data:`CRONTAB_DST_EXACT`). Fall-back nights agree.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.util import find_spec
from typing import Any

import celery
import kombu
from kombu.compression import decompress

#: The oldest Celery and Kombu line we support: an older one is refused at import, with its name.
OLDEST_LINE = (5, 3)
if tuple(celery.VERSION[:2]) < OLDEST_LINE or tuple(kombu.VERSION[:2]) < OLDEST_LINE:
    raise ImportError(
        f"celery-durable supports Celery and Kombu {OLDEST_LINE[0]}.{OLDEST_LINE[1]} to 5.7 (the docs' "
        f"Supported versions); this environment has Celery {celery.__version__} and Kombu {kombu.__version__}"
    )

#: Whether Celery's crontab due times hold across a DST change (Celery 5.5+; see the module's docstring).
CRONTAB_DST_EXACT = tuple(celery.VERSION[:2]) >= (5, 5)

#: Celery 5.7's marker in front of a compressed result (``celery.backends.base``).
COMPRESSED_PAYLOAD_MAGIC = b"\x00celery-compressed\x00"

try:
    from celery.backends.base import decompress_payload
except ImportError:  # Celery before 5.7

    def decompress_payload(payload: Any) -> Any:
        """Undo Celery 5.7's ``result_compression``; any other payload is returned as it is."""
        if isinstance(payload, memoryview):
            payload = payload.tobytes()
        if not isinstance(payload, (bytes, bytearray)) or not payload.startswith(COMPRESSED_PAYLOAD_MAGIC):
            return payload
        content_type, _, body = payload[len(COMPRESSED_PAYLOAD_MAGIC):].partition(b"\x00")
        return decompress(body, content_type.decode("utf-8"))


def publish_callback(app: Any, publish: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Publish a chord body (``publish`` is its ``delay``) as this Celery line's own backends do."""
    retry = getattr(app.amqp, "_retry_publish", None)  # Celery 5.7+
    return publish(*args, **kwargs) if retry is None else retry(publish, *args, **kwargs)


#: Whether this Celery line has ``DjangoTask`` (from 5.4). Found without importing it: that module
#: imports Django, which ``import celery_durable`` must not do for every app.
#: (5.3 has no ``celery.contrib.django`` at all, and find_spec raises on a missing parent.)
HAS_DJANGO_TASK = (
    find_spec("celery.contrib.django") is not None and find_spec("celery.contrib.django.task") is not None
)

#: The task class a Django project's app names: Celery's DjangoTask where the line has it.
DJANGO_TASK_CLS = "celery.contrib.django.task:DjangoTask" if HAS_DJANGO_TASK else "celery.app.task:Task"


def django_task() -> type | None:
    """Celery's ``DjangoTask`` (imports Django), or None on Celery 5.3."""
    if not HAS_DJANGO_TASK:
        return None
    from celery.contrib.django.task import DjangoTask

    return DjangoTask
