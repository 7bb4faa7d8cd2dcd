"""Shared check for the thread-safety tests: one Pipeline, many threads, same results as in turn."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


def assert_threads_match_sequential(pipe: Any, jobs: list[dict[str, Any]], steps: int) -> None:
    """Run ``pipe.sample(2, steps=steps, **job)`` for every job in turn, then all at once on one
    thread each (released together by a barrier); every threaded result must be bit-identical."""
    sequential = [pipe.sample(2, steps=steps, progress=False, **job) for job in jobs]
    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        barrier.wait()
        results[i] = pipe.sample(2, steps=steps, progress=False, **jobs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for got, want in zip(results, sequential):
        assert got is not None
        np.testing.assert_array_equal(got, want)
