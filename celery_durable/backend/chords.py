"""Native chords: an atomic counter per chord instead of ``celery.chord_unlock`` polling.

Each header part is stored once: its result row names its chord and header
index (``result.chord_id``, ``chord_index``), and the statement that stores it
also increments ``chord.done`` (``INSERT … ON CONFLICT DO UPDATE …
RETURNING``), one round trip per part. The chord row's lock serialises the
parts of one chord. A store that changes nothing (the part's result was
already stored) counts nothing; a part whose count makes ``done`` reach
``size + extra`` counts the stored parts in a fresh snapshot and, if they are
all there, takes the claim, reads the results in header order, sends the body
and marks the chord finished. So a part delivered twice counts once (a
FAILURE stored twice is caught by that check); a late copy after the chord
finished changes nothing; a claim whose holder died expires, and the next
copy of a part takes it over. Errors follow the Redis backend: a failed part
fails the body with a ChordError naming it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import psycopg
from celery import maybe_signature, states
from celery.exceptions import ChordError
from celery.result import GroupResult, allow_join_result
from celery.utils.functional import _regen

from ..compat import publish_callback

logger = logging.getLogger(__name__)

#: ``group_index`` of a part that has none (sorted last, as Redis's ``+inf`` score).
NO_INDEX = 2**31 - 1
#: Seconds a body publish may take before another copy of a part may take the claim over.
PUBLISH_CLAIM_SECONDS_DEFAULT = 60.0


if TYPE_CHECKING:  # a mixin of our result backend: what it uses of the backend is there (Celery has no types)
    from celery.backends.base import BaseBackend as _Backend
else:
    _Backend = object


class ChordMixin(_Backend):
    """set_chord_size / apply_chord / add_to_chord / on_chord_part_return for PostgresBackend."""

    def _chord_expires(self) -> float | None:
        chord_expires = self.app.conf.get("result_chord_expires")
        expires = self.expires if chord_expires is None else self.prepare_expires(chord_expires)
        if not expires or not self.expires:
            return None
        return float(max(expires, self.expires))

    def _claim_seconds(self) -> float:
        join_timeout = self.app.conf.result_chord_join_timeout or 5.0
        return float(max(5, join_timeout * 2))

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        with self._db() as conn:
            conn.execute(
                self.queries["chord_size_set"],
                {"group_id": str(group_id), "size": int(chord_size), "expires": self._chord_expires()},
            )

    def add_to_chord(self, group_id: str, result: Any) -> None:
        with self._db() as conn:
            conn.execute(self.queries["chord_extra_add"], {"group_id": str(group_id), "expires": self._chord_expires()})

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        # As Redis: a header holding groups is saved so the body gets its nested structure back.
        if not isinstance(header_result_args[1], _regen):
            header_result = self.app.GroupResult(*header_result_args)
            if any(isinstance(nr, GroupResult) for nr in header_result.results):
                header_result.save(backend=self)

    def _chord_part_params(self, request: Any, state: str) -> dict | None:
        """The chord parameters of a finished header part's store, or None when it is not one."""
        if request is None or state not in states.READY_STATES:
            return None
        tid, gid = getattr(request, "id", None), getattr(request, "group", None)
        if not tid or not gid or not getattr(request, "chord", None):
            return None
        index = getattr(request, "group_index", None)
        return {
            "chord_id": str(gid),
            "chord_index": NO_INDEX if index is None else int(index),
            "chord_expires": self._chord_expires(),
            "token": uuid4().hex,
            "claim_seconds": self._claim_seconds(),
        }

    def _chord_count(self, conn: psycopg.Connection, params: dict) -> tuple[bool, str | None]:
        """Store a part's result and count it (autocommit, one statement); ``(claimed, token)``."""
        row = self._execute_store(conn, self.queries["result_upsert_chord_part"], params).fetchone()
        if not (row and row[0]):
            return False, None
        # After the count committed: every part counted before it is visible to this statement.
        claimed = conn.execute(self.queries["chord_claim"], params).fetchone()
        return (True, params["token"]) if claimed and claimed[0] else (False, None)

    def _store_chord_part(self, request: Any, state: str, result: Any,
                          traceback: Any = None) -> tuple[bool, str | None]:
        """Store and count a header part whose result was not stored with the count (ignore_result).

        Returns ``(claimed, token)``.
        """
        part = self._chord_part_params(request, state)
        if part is None:
            return False, None
        result = self.encode_result(result, state)
        params = {**self._result_params(request.id, result, state, traceback, request), **part}
        with self._db() as conn:
            return self._chord_count(conn, params)

    def _take_chord_outcome(self, task_id: str, group_id: str) -> tuple[bool, str | None] | None:
        stashed = getattr(self._local, "chord_outcome", None)
        self._local.chord_outcome = None
        if stashed is not None and stashed[0] == str(task_id) and stashed[1] == str(group_id):
            return stashed[2]
        return None

    def on_chord_part_return(self, request: Any, state: str, result: Any, propagate: Any = None,
                             **kwargs: Any) -> Any:
        """Count this part (unless its result store already did) and, if it completes the header, send the body."""
        app = self.app
        tid, gid = request.id, request.group
        if not gid or not tid:
            return None
        outcome = self._take_chord_outcome(tid, gid)
        if outcome is None:
            outcome = self._store_chord_part(request, state, result)
        claimed, token = outcome
        if not claimed:
            return None
        callback = maybe_signature(request.chord, app=app)
        try:
            resl = self._chord_results(gid)
            with self._db() as conn:
                extended = conn.execute(
                    self.queries["chord_claim_extend"],
                    {"group_id": gid, "token": token,
                     "claim_seconds": max(self._claim_seconds(), PUBLISH_CLAIM_SECONDS_DEFAULT)},
                ).fetchone()
            if not extended:
                logger.warning("Chord callback for %r not published: another worker took the claim over", gid)
                return None
            try:
                publish_callback(app, callback.delay, resl)
            except Exception as exc:  # noqa: BLE001 - as Redis: the body fails, the worker goes on
                logger.exception("Chord callback for %r raised: %r", gid, exc)
                return self.chord_error_from_stack(callback, ChordError(f"Callback error: {exc!r}"))
            finally:
                self._chord_finish(gid, token)
        except ChordError as exc:
            logger.exception("Chord %r raised: %r", gid, exc)
            try:
                return self.chord_error_from_stack(callback, exc)
            finally:
                self._chord_finish(gid, None)
        except Exception as exc:  # noqa: BLE001
            logger.exception("Chord %r raised: %r", gid, exc)
            try:
                return self.chord_error_from_stack(callback, ChordError(f"Join error: {exc!r}"))
            finally:
                self._chord_finish(gid, None)
        return None

    def _chord_results(self, gid: str) -> list:
        """The header's results in order; raises ChordError for the first failed part."""
        app = self.app
        header_result = GroupResult.restore(gid, app=app, backend=self)
        if header_result is not None:
            # Saved by apply_chord because the header nests groups: join it to keep that structure.
            header_result.on_ready()
            join = header_result.join_native if header_result.supports_native_join else header_result.join
            with allow_join_result():
                return join(timeout=app.conf.result_chord_join_timeout, propagate=True)
        with self._db() as conn:
            rows = conn.execute(self.queries["chord_part_list"], (gid,)).fetchall()
        results = []
        for content_type, content_encoding, payload in rows:
            meta = self._decode_meta(content_type, content_encoding, payload)
            value = meta["result"]
            if meta["status"] in states.PROPAGATE_STATES:
                error = ChordError(f"Dependency {meta.get('task_id')} raised {value!r}")
                if isinstance(value, Exception):
                    error.__cause__ = value  # as Celery 5.6+ does; the private helper is not in older lines
                raise error
            results.append(value)
        return results

    def _chord_finish(self, gid: str, token: str | None) -> None:
        try:
            with self._db() as conn:
                done = conn.execute(self.queries["chord_finish"], {"group_id": gid, "token": token}).fetchone()
        except Exception:  # noqa: BLE001 - the body is already decided; expiry removes the row later
            logger.warning("Chord %r: could not mark it finished", gid, exc_info=True)
            return
        if not done:
            logger.warning("Chord callback claim for %r was lost before cleanup", gid)
