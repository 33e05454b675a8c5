import time

import psutil
import pytest

from bench.core import release_freed_memory, time_in_turns, time_it


def test_freed_heap_goes_back_to_the_system():
    # Objects over 512 bytes come from the C heap; with a few of them still alive in between,
    # glibc keeps the freed space until told to trim it.
    process = psutil.Process()
    before = process.memory_info().rss
    chunks = [bytes(1000) + bytes([index % 256]) for index in range(200_000)]
    survivors = chunks[::1000]
    del chunks
    held = process.memory_info().rss - before

    release_freed_memory()

    assert len(survivors) == 200
    assert held > 100 * 2**20
    assert process.memory_info().rss - before < held / 4


def test_timing_in_turns_alternates_the_actions_run_by_run():
    calls: list[str] = []
    timings = time_in_turns(
        [lambda: calls.append("dp"), lambda: calls.append("plain")], repeats=3, warmup=1
    )
    assert calls == ["dp", "plain"] * 4
    assert [timing.repeats for timing in timings] == [3, 3]
    assert all(0 <= t.min <= t.median <= t.max for t in timings)


def test_timing_in_turns_gives_each_action_its_own_seconds():
    slow, fast = time_in_turns([lambda: time.sleep(0.02), lambda: None], repeats=2, warmup=0)
    assert slow.min >= 0.02 > fast.max


def test_timing_needs_a_repeat():
    with pytest.raises(ValueError, match="at least 1"):
        time_it(lambda: None, repeats=0)
