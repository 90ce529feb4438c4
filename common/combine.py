"""Flat combining: concurrent calls that write the same aggregate run as one batch.

Callers in worker threads `submit(key, job)`; whichever holds the key's lock
takes every job queued for that key (up to `max_batch`) and runs them in one
call, so N racing writers make one store transaction instead of N optimistic
conflicts and retries. A batch that fails as a whole is re-run one job at a
time, so each caller gets its own outcome (and its own exception).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class _Pending(Generic[J]):
    __slots__ = ("done", "error", "job", "result")

    def __init__(self, job: J) -> None:
        self.job = job
        self.done = False
        self.result: object = None
        self.error: Exception | None = None


class _Slot:
    __slots__ = ("lock", "queue", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: list[_Pending] = []
        self.users = 0


class Combiner(Generic[J, R]):
    """`run(key, jobs)` returns one outcome per job, in order: a result, or
    the exception that job alone raises."""

    def __init__(self, run: Callable[[str, Sequence[J]], list[R | Exception]],
                 max_batch: int = 64) -> None:
        self._run = run
        self._max = max_batch
        self._mu = threading.Lock()
        self._slots: dict[str, _Slot] = {}

    def submit(self, key: str, job: J) -> R:
        pending: _Pending[J] = _Pending(job)
        with self._mu:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
            slot.users += 1
            slot.queue.append(pending)
        try:
            while not pending.done:
                with slot.lock:
                    if pending.done:
                        break
                    with self._mu:
                        batch, slot.queue = slot.queue[:self._max], slot.queue[self._max:]
                    self._execute(key, batch)
        finally:
            with self._mu:
                slot.users -= 1
                if slot.users == 0:
                    del self._slots[key]
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def _execute(self, key: str, batch: list[_Pending]) -> None:
        try:
            outcomes = self._run(key, [p.job for p in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError("combiner: one outcome per job")
        except Exception as exc:  # noqa: BLE001 - handed to the callers that submitted
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            for p in batch:  # isolate the job that broke the batch
                _alone(p, self._run, key)
            return
        for p, out in zip(batch, outcomes, strict=True):
            _settle(p, out)


def _alone(p: _Pending, run: Callable, key: str) -> None:
    try:
        _settle(p, run(key, [p.job])[0])
    except Exception as exc:  # noqa: BLE001 - handed to the caller that submitted it
        _settle(p, exc)


def _settle(p: _Pending, out: object) -> None:
    if isinstance(out, Exception):
        p.error = out
    else:
        p.result = out
    p.done = True
