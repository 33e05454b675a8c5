"""uvicorn servers that sleep while idle: a tick of `SERVER_TICK_S`, and a wake-up to exit.

uvicorn's `Server.main_loop` wakes every 0.1 s to refresh its Date header and to see whether
`should_exit` was set. That tick is most of what an idle Flower server costs: a bare idle uvicorn
server used 2.0 ms of CPU a second here, and so did the Runtime API thread of an idle SuperNode;
with a 1 s tick, 0.5 ms. Each hospital runs a SuperNode, and a federation's idle cost grows with
its hospitals and with how long a round lasts: 50 SuperNodes' ticks alone take a twentieth of
this machine's two cores.

`slow_idle_ticks` makes every uvicorn server in the process tick every `SERVER_TICK_S` and still
stop at once: `should_exit` becomes a flag that, when set, wakes the loop. Flower sets it from
another thread (the SuperNode's exit handler, flwr/supernode/cli/flower_supernode.py) and uvicorn
from its signal handler; neither waits for a tick. The Date header stays exact to the second, as
uvicorn keeps it. tests/hospitals/test_server_tick.py fails when an upgrade of uvicorn changes the
loop this replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import uvicorn

SERVER_TICK_S = 1.0
# uvicorn's `on_tick` refreshes the Date header when its counter is a multiple of this (its loop
# counts 0.1 s ticks), and its counter wraps at 864000.
_TICKS_PER_HEADER = 10
_COUNTER_WRAP = 864000

_EXIT = "_cohort_should_exit"
_WAKE = "_cohort_wake_main_loop"


class WakingExitFlag:
    """`uvicorn.Server.should_exit`, waking the server's main loop as it is set."""

    def __get__(self, server: object | None, owner: type | None = None) -> Any:
        if server is None:
            return self
        return vars(server).get(_EXIT, False)

    def __set__(self, server: object, value: bool) -> None:
        vars(server)[_EXIT] = value
        wake: Callable[[], None] | None = vars(server).get(_WAKE)
        if value and wake is not None:
            wake()


async def main_loop(server: uvicorn.Server) -> None:
    """uvicorn's `Server.main_loop`, ticking every `SERVER_TICK_S` and woken by `should_exit`."""
    loop = asyncio.get_running_loop()
    exit_requested = asyncio.Event()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server stopped
            loop.call_soon_threadsafe(exit_requested.set)

    # Set before the first look at should_exit, so a request to exit is never missed.
    vars(server)[_WAKE] = wake
    counter = 0
    should_exit = await server.on_tick(counter)
    while not should_exit:
        counter = (counter + _TICKS_PER_HEADER) % _COUNTER_WRAP
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exit_requested.wait(), SERVER_TICK_S)
        should_exit = await server.on_tick(counter)


def slow_idle_ticks() -> None:
    """Make every uvicorn server in this process tick every `SERVER_TICK_S` (see the module)."""
    if uvicorn.Server.main_loop is not main_loop:
        uvicorn.Server.main_loop = main_loop  # type: ignore[method-assign, assignment]
        uvicorn.Server.should_exit = WakingExitFlag()  # type: ignore[assignment]
