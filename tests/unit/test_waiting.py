"""db/waiting.py: poll()-based waits work for descriptors numbered past select()'s limit (FD_SETSIZE)."""

from __future__ import annotations

import os
import resource
import socket

import pytest

from celery_durable.db import waiting

PAST_LIMIT = 1500


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_a_descriptor_past_select_limit_is_waited_on(pair):
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= PAST_LIMIT:
        pytest.skip("RLIMIT_NOFILE too low for the descriptor number")
    a, b = pair
    high = os.dup2(a.fileno(), PAST_LIMIT)
    try:
        assert not waiting.readable(high, 0)
        b.send(b"x")
        assert waiting.readable(high, 1)
        assert waiting.ready((high,), (high,), 0) == ({high}, {high})
    finally:
        os.close(high)


def test_a_hung_up_peer_counts_as_readable(pair):
    a, b = pair
    b.close()
    assert waiting.readable(a.fileno(), 0)


def test_a_closed_descriptor_raises_as_select_does(pair):
    fd = os.dup(pair[0].fileno())
    os.close(fd)
    with pytest.raises(OSError):
        waiting.readable(fd, 0)
