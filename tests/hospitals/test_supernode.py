"""`cohort-supernode`: Flower's SuperNode, polling with an idle backoff."""

from __future__ import annotations

import ast
import inspect
import time
from functools import partial

import flwr.supernode.start_client_internal as supernode_loop
import pytest
from flwr.proto.runtime_pb2 import AcquireTaskRequest, AcquireTaskResponse
from flwr.proto.task_pb2 import Task
from flwr.supernode.servicer.runtime import runtime_handlers

from hospitals.polling import OBJECT_RETRY_FIRST_S, IdleBackoff
from hospitals.supernode import (
    FLOWER_IDLE_WAIT_S,
    FLOWER_REPLY_CHECK_S,
    REPLY_CHECK_S,
    SuperNodeClock,
    TaskWait,
    install,
    parser,
)


def flower_loop_sleeps() -> list[float]:
    """The seconds of every `time.sleep(<constant>)` in the installed Flower's SuperNode loop."""
    tree = ast.parse(inspect.getsource(supernode_loop))
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and ast.unparse(node.func) == "time.sleep"
        and isinstance(node.args[0], ast.Constant)
    ]


def test_the_installed_flower_sleeps_as_the_clock_expects():
    # A Flower upgrade that changes these waits fails here, not silently in a slow study.
    assert sorted(flower_loop_sleeps()) == sorted(
        [FLOWER_REPLY_CHECK_S, FLOWER_REPLY_CHECK_S, FLOWER_IDLE_WAIT_S]
    )


def test_idle_waits_back_off_and_a_reply_check_restarts_them():
    slept: list[float] = []
    clock = SuperNodeClock(IdleBackoff(first_s=0.1, longest_s=0.3, factor=2), sleep=slept.append)
    for _ in range(3):
        clock.sleep(FLOWER_IDLE_WAIT_S)
    clock.sleep(FLOWER_REPLY_CHECK_S)
    clock.sleep(FLOWER_IDLE_WAIT_S)
    clock.sleep(7)
    assert slept == [0.1, 0.2, 0.3, REPLY_CHECK_S, 0.1, 7]


def test_the_clock_lends_the_rest_of_the_time_module():
    clock = SuperNodeClock(IdleBackoff())
    assert clock.monotonic is time.monotonic


def test_install_changes_only_flowers_supernode_loop_and_task_handler(monkeypatch):
    flowers_acquire = runtime_handlers.acquire_task
    monkeypatch.setitem(vars(supernode_loop), "time", time)
    monkeypatch.setitem(vars(supernode_loop), "pull_objects", supernode_loop.pull_objects)
    monkeypatch.setitem(vars(runtime_handlers), "acquire_task", flowers_acquire)
    install(IdleBackoff())
    install(IdleBackoff())  # a second install changes nothing more
    assert isinstance(supernode_loop.time, SuperNodeClock)
    assert isinstance(supernode_loop.pull_objects, partial)
    assert supernode_loop.pull_objects.keywords["initial_backoff"] == OBJECT_RETRY_FIRST_S
    assert time.sleep is not supernode_loop.time.sleep  # the real module is untouched
    assert isinstance(runtime_handlers.acquire_task, TaskWait)
    assert runtime_handlers.acquire_task.acquire is flowers_acquire


class PendingAfter:
    """An AcquireTask handler whose task is pending from its `calls`-th call on."""

    def __init__(self, calls: int) -> None:
        self.calls_left = calls

    def __call__(self, request: AcquireTaskRequest, state: object) -> AcquireTaskResponse:
        self.calls_left -= 1
        if self.calls_left > 0:
            return AcquireTaskResponse()
        return AcquireTaskResponse(task=Task(task_id=7), token="token")  # noqa: S106


@pytest.mark.parametrize("calls", [1, 3])
def test_a_request_for_a_task_is_answered_as_soon_as_one_is_pending(calls):
    slept: list[float] = []
    wait = TaskWait(PendingAfter(calls), wait_s=60, check_s=0.01, sleep=slept.append)
    response = wait(AcquireTaskRequest(), state=None)
    assert response.task.task_id == 7
    assert slept == [0.01] * (calls - 1)


def test_a_request_for_a_task_gives_up_after_the_wait():
    wait = TaskWait(PendingAfter(10**9), wait_s=0.05, check_s=0.01)
    began = time.monotonic()
    response = wait(AcquireTaskRequest(), state=None)
    assert not response.HasField("task")
    assert 0.05 <= time.monotonic() - began < 5


@pytest.mark.parametrize(
    ("argv", "ours", "flowers"),
    [
        (["--insecure", "--superlink", "a:9092"], 1.0, ["--insecure", "--superlink", "a:9092"]),
        (["--max-idle-wait", "3", "--isolation", "process"], 3.0, ["--isolation", "process"]),
        (["--help"], 1.0, ["--help"]),  # Flower's help
    ],
)
def test_arguments_split_between_cohort_and_flower(argv, ours, flowers):
    args, rest = parser().parse_known_args(argv)
    assert (args.max_idle_wait, rest) == (ours, flowers)
