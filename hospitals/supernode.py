"""`cohort-supernode`: Flower's `flower-supernode`, polling the SuperLink with an idle backoff.

Flower 1.41's SuperNode loop (flwr/supernode/start_client_internal.py, `start_client_internal`)
sleeps a fixed 3 s whenever it pulls and finds no message, and 0.5 s between checks for its
ClientApp's reply; nothing in Flower configures either. A round is one exchange per hospital
(evaluate, train) and each message arrives while the SuperNode sleeps, so those fixed waits cost a
study several seconds per round whatever its size. This entry point runs Flower's own SuperNode,
arguments and all, with these changes. An idle wait follows `IdleBackoff` (short after a message,
growing to `--max-idle-wait` while none comes), counted from the start of the empty pull: when
`cohort-superlink` held the pull until its wait ran out, the next pull follows at once, so the
SuperLink tells the SuperNode of a message the moment it has one. A reply check takes
`REPLY_CHECK_S`: it reads the SuperNode's own memory, not the network. A message's object that the
SuperLink does not hold yet is asked for again within 0.05 s, not 1 s
(`retry_object_pulls_sooner`). And a launcher's request for a task, when none is pending, waits up
to `TASK_WAIT_S` for one (`task_wait`) instead of returning at once: the SuperNode's state
announces each task it creates (`TASK_ARRIVALS`), so the launcher learns of it at once, and sends
one request per `TASK_WAIT_S` while idle, not a burst of them after each task. Its Runtime API
server, idle, wakes once a second instead of ten times (`hospitals.server_tick`), and serves
without Flower's tracing middleware unless tracing is on (`untraced_unless_enabled`).

    cohort-supernode [--max-idle-wait SECONDS] <flower-supernode arguments>

The changes reach the loop's module, through its names `time` (which it uses for nothing but these
sleeps) and `pull_objects`, the Runtime API's handlers, through `acquire_task`, the Runtime API's
`create_app`, and `InMemoryNodeState.create_task`; `install` refuses a Flower without the first
four, and tests/hospitals/test_supernode.py fails when a Flower upgrade changes the sleeps
themselves or traces with tracing off.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from logging import INFO
from typing import Any, cast

import flwr.supernode.main as supernode_app
import flwr.supernode.start_client_internal as supernode_loop
from fastapi import FastAPI
from flwr.proto.runtime_pb2 import AcquireTaskRequest, AcquireTaskResponse
from flwr.supercore import log
from flwr.supercore.exit import add_exit_handler
from flwr.supercore.routers.runtime.tracing import RuntimeTracingMiddleware
from flwr.supernode.cli.flower_supernode import flower_supernode
from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState
from flwr.supernode.servicer.runtime import runtime_handlers

from hospitals.polling import (
    Arrivals,
    HeldRequest,
    IdleBackoff,
    add_max_idle_wait_option,
    announcing,
    replace_in_flower,
    retry_object_pulls_sooner,
)
from hospitals.server_tick import slow_idle_ticks

# The waits Flower's loop asks for: after an empty pull, and between checks for a task's reply.
FLOWER_IDLE_WAIT_S = 3.0
FLOWER_REPLY_CHECK_S = 0.5
REPLY_CHECK_S = 0.05
# An AcquireTask finding no pending task waits for one up to TASK_WAIT_S: an idle launcher costs
# its SuperNode one request per TASK_WAIT_S. Idle, at 4 s, a launcher used 0.5 ms of CPU a second
# and its SuperNode 2.3 to 3.0; at 15 s, with the SuperNode's server ticking once a second, 0.2
# and 0.8. Half the launcher's 30 s HTTP timeout; the SuperNode's stop ends the held request at
# once, and a SuperNode that dies ends it too.
TASK_WAIT_S = 15.0
# Flower's switch for tracing: unless it is "1", RuntimeTracingMiddleware hands every response on
# untouched (see its dispatch), yet costs ~0.1-0.3 ms of CPU per request as a BaseHTTPMiddleware.
TRACING_SWITCH = "FLWR_TRACING_ENABLED"


class SuperNodeClock:
    """Stands in for the `time` module inside Flower's SuperNode loop."""

    def __init__(
        self,
        backoff: IdleBackoff,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backoff = backoff
        self._sleep = sleep
        self._monotonic = monotonic
        self._awake_since = monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE_WAIT_S:
            # The wait runs from the start of the empty pull: a pull that cohort-superlink held
            # for a message already waited, and is followed by the next at once.
            pulled_for_s = self._monotonic() - self._awake_since
            self._nap(self._backoff.next_wait() - pulled_for_s)
        elif seconds == FLOWER_REPLY_CHECK_S:
            # Only a pulled message makes the loop wait for a reply: the next one may follow soon.
            self._backoff.work_found()
            self._nap(REPLY_CHECK_S)
        else:
            self._nap(seconds)

    def _nap(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep(seconds)
        self._awake_since = self._monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


#: This process's: Flower's NodeState announces each task it creates here (see `install`).
TASK_ARRIVALS = Arrivals()
FLOWER_CREATE_TASK = InMemoryNodeState.create_task


def task_wait(
    acquire_task: Callable[..., AcquireTaskResponse],
) -> HeldRequest[AcquireTaskRequest, AcquireTaskResponse]:
    """Flower's AcquireTask handler, answering "no task" only after `TASK_WAIT_S` without one."""
    return HeldRequest(
        acquire_task,
        has_work=lambda response: response.HasField("task"),
        arrivals=TASK_ARRIVALS,
        wait_s=TASK_WAIT_S,
    )


def untraced_unless_enabled(create_app: Callable[..., FastAPI]) -> Callable[..., FastAPI]:
    """Flower's `create_app` for the SuperNode's Runtime API, leaving out its tracing middleware
    when the app is created with tracing off."""

    @functools.wraps(create_app)
    def create(*args: Any, **kwargs: Any) -> FastAPI:
        app = create_app(*args, **kwargs)
        if os.environ.get(TRACING_SWITCH) != "1":
            app.user_middleware = [
                each
                for each in app.user_middleware
                if each.cls is not cast(object, RuntimeTracingMiddleware)
            ]
        return app

    return create


def install(backoff: IdleBackoff) -> None:
    """Make Flower's SuperNode loop, in this process, poll as `backoff` says, and its Runtime API
    hold a request for a task until one comes (`task_wait`)."""
    # Flower's module's own name for `time`, not `time` itself: other modules keep the real sleep.
    replace_in_flower(supernode_loop, "time", SuperNodeClock(backoff))
    retry_object_pulls_sooner(supernode_loop, "pull_objects")
    slow_idle_ticks()
    if not hasattr(supernode_app.create_app, "__wrapped__"):
        replace_in_flower(
            supernode_app, "create_app", untraced_unless_enabled(supernode_app.create_app)
        )
    if not isinstance(runtime_handlers.acquire_task, HeldRequest):
        replace_in_flower(
            runtime_handlers, "acquire_task", task_wait(runtime_handlers.acquire_task)
        )
        # A held request would hold up the Runtime API's graceful stop (the exit handler of
        # Flower's that stops it waits up to 3 s): end them first, in the phase before the others.
        add_exit_handler(TASK_ARRIVALS.close, run_before_force_exit=True)
    # The SuperNode's only NodeState (flwr/supernode/nodestate/nodestate_factory.py).
    if InMemoryNodeState.create_task is FLOWER_CREATE_TASK:
        InMemoryNodeState.create_task = announcing(FLOWER_CREATE_TASK, TASK_ARRIVALS)  # type: ignore[method-assign]
    log(
        INFO,
        "Polling the SuperLink %g s after a message, backing off to %g s while none comes",
        backoff.first_s,
        backoff.longest_s,
    )


def parser() -> argparse.ArgumentParser:
    # No --help of its own: `cohort-supernode --help` shows flower-supernode's.
    root = argparse.ArgumentParser(prog="cohort-supernode", add_help=False)
    add_max_idle_wait_option(root, polled_for="a message")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    ours, flowers = parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    install(IdleBackoff(longest_s=ours.max_idle_wait))
    # Flower's command line reads sys.argv itself.
    sys.argv = ["flower-supernode", *flowers]
    flower_supernode()
    return 0
