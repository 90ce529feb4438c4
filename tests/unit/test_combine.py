"""Flat combining: racing writers of one key share one batch; outcomes stay per job."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.combine import Combiner

pytestmark = pytest.mark.unit


def until(cond) -> None:
    for _ in range(5000):
        if cond():
            return
        threading.Event().wait(0.001)
    raise AssertionError("condition not reached")


def running(comb, key) -> bool:
    slot = comb._slots.get(key)
    return slot is not None and slot.lock.locked()


def queued(comb) -> int:
    return sum(len(s.queue) for s in list(comb._slots.values()))


def behind_a_running_batch(comb, key, first, rest, hold, caught):
    """Submit `first`, which blocks in its batch until `hold`; queue `rest`
    behind it; release. Returns every outcome (a caught error as its text)."""
    def submit(j):
        try:
            return comb.submit(key, j)
        except caught as e:
            return str(e)
    with ThreadPoolExecutor(len(rest) + 1) as pool:
        head = pool.submit(submit, first)
        until(lambda: running(comb, key))
        tail = [pool.submit(submit, j) for j in rest]
        until(lambda: queued(comb) == len(rest))
        hold.set()
        return [head.result()] + [f.result() for f in tail]


class Runner:
    def __init__(self, hold: threading.Event | None = None) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.hold = hold

    def __call__(self, key, jobs):
        if self.hold is not None:
            self.hold.wait(5)  # the first batch blocks until the rest have queued
        self.batches.append((key, list(jobs)))
        return [ValueError(f"odd {j}") if j % 2 else j * 10 for j in jobs]


def test_jobs_queued_behind_a_running_batch_run_together_with_their_own_outcomes():
    hold = threading.Event()
    run = Runner(hold)
    comb: Combiner[int, int] = Combiner(run)
    results = behind_a_running_batch(comb, "org", 0, range(1, 9), hold, ValueError)
    assert results == [0, "odd 1", 20, "odd 3", 40, "odd 5", 60, "odd 7", 80]
    assert [len(jobs) for _, jobs in run.batches] == [1, 8]
    assert comb._slots == {}  # no slot outlives its callers


def test_keys_do_not_share_batches():
    run = Runner()
    comb: Combiner[int, int] = Combiner(run)
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda j: comb.submit(f"k{j % 2}", j * 2), range(40)))
    assert out == [j * 20 for j in range(40)]
    for key, jobs in run.batches:
        assert {j // 2 % 2 for j in jobs} == {int(key[1])}


def test_a_batch_that_fails_whole_is_rerun_job_by_job():
    calls: list[list[int]] = []
    hold = threading.Event()

    def run(key, jobs):
        hold.wait(5)
        calls.append(list(jobs))
        if 3 in jobs:
            raise RuntimeError("poison")
        return list(jobs)
    comb: Combiner[int, int] = Combiner(run)
    results = behind_a_running_batch(comb, "k", 0, [1, 2, 3, 4], hold, RuntimeError)
    assert results == [0, 1, 2, "poison", 4]
    assert calls[1] == [1, 2, 3, 4] and calls[2:] == [[1], [2], [3], [4]]


def test_batches_are_capped():
    hold = threading.Event()
    run = Runner(hold)
    comb: Combiner[int, int] = Combiner(run, max_batch=3)
    with ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(comb.submit, "k", 2 * j) for j in range(8)]
        until(lambda: queued(comb) == 7)
        hold.set()
        assert [f.result() for f in futs] == [20 * j for j in range(8)]
    assert max(len(jobs) for _, jobs in run.batches) == 3
    assert sum(len(jobs) for _, jobs in run.batches) == 8
