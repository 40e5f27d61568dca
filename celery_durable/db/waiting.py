"""Waiting on sockets with ``poll()``, so a descriptor numbered past ``FD_SETSIZE`` waits like any other.

``select.select`` refuses descriptor numbers of ``FD_SETSIZE`` or more, and a
busy web or gevent process hands such numbers to every new connection.
``poll()`` has no such limit and, unlike an epoll selector, needs no descriptor
and no set-up calls of its own. Where the platform has no ``poll()`` (Windows),
``select()`` has no such limit either and is used. Gevent patches
``select.poll``; it is looked up at each call, so a patched process waits
cooperatively.
"""

from __future__ import annotations

import errno
import math
import os
import select
from collections.abc import Iterable

_IN = getattr(select, "POLLIN", 0) | getattr(select, "POLLPRI", 0)
_OUT = getattr(select, "POLLOUT", 0)
#: A hung-up or failed socket counts as ready: the read or write that follows tells what happened.
_TROUBLE = getattr(select, "POLLHUP", 0) | getattr(select, "POLLERR", 0)
_INVALID = getattr(select, "POLLNVAL", 0)


def ready(read: Iterable[int], write: Iterable[int] = (), timeout: float | None = None) -> tuple[set[int], set[int]]:
    """Block until a descriptor is ready or ``timeout`` seconds pass (None: no limit); (readable, writable).

    Raises OSError (EBADF) for a descriptor that is not open, as ``select()`` does.
    """
    read, write = set(read), set(write)
    if not hasattr(select, "poll"):
        ready_r, ready_w, _ = select.select(list(read), list(write), [], timeout)
        return set(ready_r), set(ready_w)
    poller = select.poll()
    for fd in read | write:
        poller.register(fd, (_IN if fd in read else 0) | (_OUT if fd in write else 0))
    readable: set[int] = set()
    writable: set[int] = set()
    for fd, events in poller.poll(_milliseconds(timeout)):
        if events & _INVALID:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if fd in read and events & (_IN | _TROUBLE):
            readable.add(fd)
        if fd in write and events & (_OUT | _TROUBLE):
            writable.add(fd)
    return readable, writable


def readable(fd: int, timeout: float | None = None) -> bool:
    """Block until ``fd`` can be read (or has hung up) or ``timeout`` seconds pass; whether it can.

    The common case (pool checkout, every wait for an answer) in fewer steps than :func:`ready`.
    """
    if not hasattr(select, "poll"):
        return bool(select.select([fd], [], [], timeout)[0])
    poller = select.poll()
    poller.register(fd, _IN)
    for _, events in poller.poll(_milliseconds(timeout)):
        if events & _INVALID:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return True
    return False


def _milliseconds(timeout: float | None) -> int | None:
    return None if timeout is None else max(0, math.ceil(timeout * 1000))
