"""`cohort-supernode`: Flower's `flower-supernode`, polling the SuperLink with an idle backoff.

Flower 1.41's SuperNode loop (flwr/supernode/start_client_internal.py, `start_client_internal`)
sleeps a fixed 3 s whenever it pulls and finds no message, and 0.5 s between checks for its
ClientApp's reply; nothing in Flower configures either. A round is two exchanges per hospital
(train, evaluate) and each message arrives while the SuperNode sleeps, so those fixed waits cost a
study several seconds per round whatever its size. This entry point runs Flower's own SuperNode,
arguments and all, with two changes. An idle wait follows `IdleBackoff` (short after a message,
growing to `--max-idle-wait` while none comes) and a reply check takes `REPLY_CHECK_S`: it reads
the SuperNode's own memory, not the network. A message's object that the SuperLink does not
hold yet is asked for again within 0.05 s, not 1 s (`retry_object_pulls_sooner`). And a launcher's
request for a task, when none is pending, waits up to `TASK_WAIT_S` for one (`TaskWait`) instead
of returning at once: the launcher learns of a task within `TASK_CHECK_S` of its message, and
sends one request a second while idle, not a burst of them after each task.

    cohort-supernode [--max-idle-wait SECONDS] <flower-supernode arguments>

The changes reach two modules only: the loop's, through its names `time` (which it uses for nothing
but these sleeps) and `pull_objects`, and the Runtime API's handlers, through `acquire_task`;
`install` refuses a Flower without them, and tests/hospitals/test_supernode.py fails when a Flower
upgrade changes the sleeps themselves.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from logging import INFO
from typing import Any

import flwr.supernode.start_client_internal as supernode_loop
from flwr.proto.runtime_pb2 import AcquireTaskRequest, AcquireTaskResponse
from flwr.supercore import log
from flwr.supernode.cli.flower_supernode import flower_supernode
from flwr.supernode.nodestate import NodeState
from flwr.supernode.servicer.runtime import runtime_handlers

from hospitals.polling import (
    IdleBackoff,
    add_max_idle_wait_option,
    replace_in_flower,
    retry_object_pulls_sooner,
)

# The waits Flower's loop asks for: after an empty pull, and between checks for a task's reply.
FLOWER_IDLE_WAIT_S = 3.0
FLOWER_REPLY_CHECK_S = 0.5
REPLY_CHECK_S = 0.05
# An AcquireTask finding no pending task looks again every TASK_CHECK_S, in this process's memory,
# for up to TASK_WAIT_S: well within the launcher's 30 s HTTP timeout, and short enough that the
# launcher, between requests, still checks every second that its SuperNode lives.
TASK_WAIT_S = 1.0
TASK_CHECK_S = 0.01


class SuperNodeClock:
    """Stands in for the `time` module inside Flower's SuperNode loop."""

    def __init__(self, backoff: IdleBackoff, sleep: Callable[[float], None] = time.sleep) -> None:
        self._backoff = backoff
        self._sleep = sleep

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE_WAIT_S:
            self._sleep(self._backoff.next_wait())
        elif seconds == FLOWER_REPLY_CHECK_S:
            # Only a pulled message makes the loop wait for a reply: the next one may follow soon.
            self._backoff.work_found()
            self._sleep(REPLY_CHECK_S)
        else:
            self._sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


AcquireTask = Callable[[AcquireTaskRequest, NodeState], AcquireTaskResponse]


@dataclass(frozen=True)
class TaskWait:
    """Flower's AcquireTask handler, answering "no task" only after `wait_s` without one."""

    acquire: AcquireTask
    wait_s: float = TASK_WAIT_S
    check_s: float = TASK_CHECK_S
    sleep: Callable[[float], None] = time.sleep

    def __call__(self, request: AcquireTaskRequest, state: NodeState) -> AcquireTaskResponse:
        deadline = time.monotonic() + self.wait_s
        while True:
            response = self.acquire(request, state)
            if response.HasField("task") or time.monotonic() >= deadline:
                return response
            self.sleep(self.check_s)


def install(backoff: IdleBackoff) -> None:
    """Make Flower's SuperNode loop, in this process, poll as `backoff` says, and its Runtime API
    hold a request for a task until one comes (`TaskWait`)."""
    # Flower's module's own name for `time`, not `time` itself: other modules keep the real sleep.
    replace_in_flower(supernode_loop, "time", SuperNodeClock(backoff))
    retry_object_pulls_sooner(supernode_loop, "pull_objects")
    if not isinstance(runtime_handlers.acquire_task, TaskWait):
        replace_in_flower(runtime_handlers, "acquire_task", TaskWait(runtime_handlers.acquire_task))
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
