"""The result NOTIFY payload: what travels inline, and that every payload parses back to its task id."""

from celery_durable.backend import notify


def test_small_ascii_meta_travels_inline_and_parses_back():
    meta = b'{"status":"SUCCESS","result":[1,"a:b"],"task_id":"x"}'
    for task_id in ["d3b07384-d9a0-4c9f-8f5e-1c2d3e4f5a6b", "my:id:with:colons", "\x1eodd", "ü-id"]:
        payload = notify.inline(task_id, "application/json", "utf-8", meta)
        if not task_id.isascii():
            assert payload is None  # the server's encoding may not take it: the id alone travels
            continue
        assert notify.parse(payload) == (task_id, ("application/json", "utf-8", meta))


def test_large_or_non_ascii_meta_sends_the_id_only():
    assert notify.inline("t", "application/json", "utf-8", b'"' + b"x" * 8000 + b'"') is None
    assert notify.inline("t", "application/json", "utf-8", '"ü"'.encode()) is None
    assert notify.inline("t", "application/x-python-serialize", "binary", b"\x80\x04K\x01.") is None


def test_a_bare_task_id_parses_as_itself():
    assert notify.parse("d3b07384-d9a0-4c9f") == ("d3b07384-d9a0-4c9f", None)
    assert notify.parse("\x1egarbage") == ("\x1egarbage", None)
