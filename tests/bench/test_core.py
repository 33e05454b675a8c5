import psutil

from bench.core import release_freed_memory


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
