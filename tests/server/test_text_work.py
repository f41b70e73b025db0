"""server/text_work.py: tokenizing and parsing request text in turns (unit tests with threads the test holds; the
service over HTTP is in test_hostile_parsing.py). Ordered by events (jobs started), never by sleeps."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from server.errors import QueueFull
from server.text_work import REQUEST_BYTES, TextWork

LARGE, SMALL = 900_000, 200


class Jobs:
    """Jobs that record when they start and run until the test lets them go."""

    def __init__(self):
        self.started: list[str] = []
        self.release = threading.Event()

    def __call__(self, name: str) -> str:
        self.started.append(name)
        assert self.release.wait(30), "never released"
        return name

    async def wait_started(self, n: int) -> None:
        deadline = time.monotonic() + 30
        while len(self.started) < n:
            assert time.monotonic() < deadline, self.started
            await asyncio.sleep(0.005)


async def _submit(work: TextWork, caller: str, jobs, name: str, size: int):
    REQUEST_BYTES.set(size)  # a task's own copy of the context, as each request has
    return await work.run(caller, jobs, name)


def test_a_small_request_never_waits_for_a_backlog_of_large_ones():
    async def main():
        work, jobs = TextWork(threads=2, max_queued_bytes=1 << 30), Jobs()
        flood = [asyncio.create_task(_submit(work, "", jobs, f"large{i}", LARGE)) for i in range(6)]
        await jobs.wait_started(1)
        await asyncio.sleep(0.05)
        assert jobs.started == ["large0"]  # large jobs leave the last thread free
        small = asyncio.create_task(_submit(work, "", jobs, "small", SMALL))  # the same caller (no keys)
        await jobs.wait_started(2)
        assert jobs.started == ["large0", "small"]  # ahead of five waiting large jobs
        jobs.release.set()
        assert await small == "small" and [await t for t in flood] == [f"large{i}" for i in range(6)]
        assert work.running == 0 and work.queued_bytes == 0
        work.close()

    asyncio.run(main())


def test_turns_go_to_the_caller_that_waited_longest_and_smallest_first_within_one():
    async def main():
        work, jobs = TextWork(threads=3, max_queued_bytes=1 << 30), Jobs()
        heavy = [asyncio.create_task(_submit(work, "heavy", jobs, f"h{i}", LARGE + i)) for i in (3, 1, 2, 0)]
        await jobs.wait_started(2)  # two large threads of three
        light = asyncio.create_task(_submit(work, "light", jobs, "l0", LARGE))
        await asyncio.sleep(0.05)
        assert jobs.started == ["h3", "h1"]  # as they came while threads were free; h2 and h0 wait, then light
        jobs.release.set()
        await asyncio.gather(light, *heavy)
        # when a thread frees, light's turn comes before heavy's next job, and heavy's smallest goes first
        assert jobs.started == ["h3", "h1", "l0", "h0", "h2"], jobs.started
        work.close()

    asyncio.run(main())


def test_the_queue_is_bounded_in_bytes_and_a_caller_with_nothing_waiting_is_admitted():
    async def main():
        work, jobs = TextWork(threads=2, max_queued_bytes=2 * LARGE), Jobs()
        running = asyncio.create_task(_submit(work, "a", jobs, "run", LARGE))
        await jobs.wait_started(1)
        waiting = [asyncio.create_task(_submit(work, "a", jobs, f"w{i}", LARGE)) for i in range(2)]
        await asyncio.sleep(0.05)
        assert work.queued_bytes == 2 * LARGE
        with pytest.raises(QueueFull) as e:
            await _submit(work, "a", jobs, "over", LARGE)  # "a" has work waiting: 429
        assert e.value.status == 429 and "max_text_work_bytes" in e.value.message
        other = asyncio.create_task(_submit(work, "b", jobs, "b0", LARGE))  # nothing waiting: admitted over it
        await asyncio.sleep(0.05)
        assert work.queued_bytes == 3 * LARGE
        jobs.release.set()
        await asyncio.gather(running, other, *waiting)
        assert work.queued_bytes == 0
        work.close()

    asyncio.run(main())


def test_a_cancelled_request_leaves_the_queue_and_its_job_never_runs():
    async def main():
        work, jobs = TextWork(threads=2, max_queued_bytes=1 << 30), Jobs()
        running = asyncio.create_task(_submit(work, "", jobs, "run", LARGE))
        await jobs.wait_started(1)
        gone = asyncio.create_task(_submit(work, "", jobs, "gone", LARGE))
        await asyncio.sleep(0.05)
        assert work.queued_bytes == LARGE
        gone.cancel()  # its client left while it waited
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert work.queued_bytes == 0
        jobs.release.set()
        await running
        assert jobs.started == ["run"]
        work.close()

    asyncio.run(main())


def test_errors_and_context_travel_with_the_job():
    import contextvars

    who = contextvars.ContextVar("who", default="nobody")

    def job():
        if who.get() == "bad":
            raise ValueError("bad input")
        return who.get()

    async def main():
        work = TextWork(threads=2, max_queued_bytes=1 << 30)
        who.set("caller-a")
        assert await work.run("a", job) == "caller-a"
        who.set("bad")
        with pytest.raises(ValueError, match="bad input"):
            await work.run("a", job)
        assert work.running == 0
        work.close()

    asyncio.run(main())
    with pytest.raises(ValueError, match="at least 2 threads"):
        TextWork(threads=1, max_queued_bytes=1)
