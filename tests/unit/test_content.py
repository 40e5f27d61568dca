"""Stored arguments and results decode only with accepted content types (no database needed)."""

from __future__ import annotations

import base64
import pickle

import pytest
from celery import Celery

from celery_durable import content
from celery_durable.exceptions import Undecodable
from celery_durable.workflow.canvas import call_args
from celery_durable.workflow.checkpoint import decode


class _Touch:
    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "x"))


def _app(accept: list[str], result_accept: list[str] | None = None) -> Celery:
    app = Celery("content", set_as_current=False)
    app.conf.update(accept_content=accept, result_accept_content=result_accept)
    return app


def _encoded(content_type: str, data: bytes) -> dict:
    return {"task": "t", "encoded": {"content_type": content_type, "content_encoding": "binary",
                                     "data": base64.b64encode(data).decode()}}


def test_pickled_arguments_and_results_are_refused_by_a_json_only_app(tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(([_Touch(marker)], {}))
    with pytest.raises(Undecodable, match=content.PICKLE) as error:
        call_args(_encoded(content.PICKLE, payload), _app(["json"]), "2")
    assert error.value.path == "2"
    with pytest.raises(Undecodable, match=content.PICKLE):
        decode(_app(["json", "pickle"], ["json"]), content.PICKLE, pickle.dumps(_Touch(marker)), "1")
    assert not marker.exists()
    assert content.show(payload, content.PICKLE, "binary", content.shown_types(_app(["pickle"]))) == \
        content.Opaque(content.PICKLE, len(payload))
    assert not marker.exists()


def test_accepted_content_types_still_decode():
    app = _app(["json", "pickle"])
    assert call_args(_encoded(content.PICKLE, pickle.dumps(([{1, 2}], {"k": 1}))), app) == ([{1, 2}], {"k": 1})
    assert decode(_app(["pickle"]), content.PICKLE, pickle.dumps({3})) == {3}  # result_accept_content unset
    assert decode(_app(["json"]), "application/json", b"[1, 2]") == [1, 2]


@pytest.mark.parametrize("encoded", [
    {"content_type": "application/json", "content_encoding": "utf-8", "data": "not base64!"},
    {"content_type": "application/json", "content_encoding": "utf-8", "data": base64.b64encode(b"5").decode()},
    {"content_type": "application/json", "data": base64.b64encode(b"[[], {}]").decode()},
])
def test_malformed_stored_arguments_are_undecodable(encoded):
    with pytest.raises(Undecodable):
        call_args({"task": "t", "encoded": encoded}, _app(["json"]), "0")
