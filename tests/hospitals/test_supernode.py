"""`cohort-supernode`: Flower's SuperNode, polling with an idle backoff."""

from __future__ import annotations

import ast
import inspect
import threading
import time
from functools import partial

import flwr.supernode.start_client_internal as supernode_loop
import pytest
from flwr.proto.runtime_pb2 import AcquireTaskRequest, AcquireTaskResponse
from flwr.proto.task_pb2 import Task
from flwr.supercore.constant import TaskType
from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState
from flwr.supernode.servicer.runtime import runtime_handlers

from hospitals.polling import OBJECT_RETRY_FIRST_S, IdleBackoff
from hospitals.supernode import (
    FLOWER_CREATE_TASK,
    FLOWER_IDLE_WAIT_S,
    FLOWER_REPLY_CHECK_S,
    REPLY_CHECK_S,
    TASK_ARRIVALS,
    SuperNodeClock,
    TaskArrivals,
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


def test_install_changes_only_flowers_supernode_loop_task_handler_and_state(monkeypatch):
    flowers_acquire = runtime_handlers.acquire_task
    monkeypatch.setitem(vars(supernode_loop), "time", time)
    monkeypatch.setitem(vars(supernode_loop), "pull_objects", supernode_loop.pull_objects)
    monkeypatch.setitem(vars(runtime_handlers), "acquire_task", flowers_acquire)
    monkeypatch.setattr(InMemoryNodeState, "create_task", FLOWER_CREATE_TASK)
    install(IdleBackoff())
    install(IdleBackoff())  # a second install changes nothing more
    assert isinstance(supernode_loop.time, SuperNodeClock)
    assert isinstance(supernode_loop.pull_objects, partial)
    assert supernode_loop.pull_objects.keywords["initial_backoff"] == OBJECT_RETRY_FIRST_S
    assert time.sleep is not supernode_loop.time.sleep  # the real module is untouched
    assert isinstance(runtime_handlers.acquire_task, TaskWait)
    assert runtime_handlers.acquire_task.acquire is flowers_acquire
    assert InMemoryNodeState.create_task.__wrapped__ is FLOWER_CREATE_TASK

    state = InMemoryNodeState(InMemoryObjectStore())
    before = TASK_ARRIVALS.created
    state.create_task(task_type=TaskType.CLIENT_APP, run_id=1, fab_hash="f")
    assert TASK_ARRIVALS.created == before + 1


class PendingAfter:
    """An AcquireTask handler whose task is pending once `arrivals` announced `tasks` tasks."""

    def __init__(self, arrivals: TaskArrivals, tasks: int) -> None:
        self.arrivals = arrivals
        self.tasks = tasks
        self.calls = 0

    def __call__(self, request: AcquireTaskRequest, state: object) -> AcquireTaskResponse:
        self.calls += 1
        if self.arrivals.created < self.tasks:
            return AcquireTaskResponse()
        return AcquireTaskResponse(task=Task(task_id=7), token="token")  # noqa: S106


def announce_later(arrivals: TaskArrivals, *, times: int, after_s: float) -> threading.Thread:
    def announce() -> None:
        for _ in range(times):
            time.sleep(after_s)
            arrivals.announce()

    thread = threading.Thread(target=announce)
    thread.start()
    return thread


def test_a_waiting_request_for_a_task_is_answered_when_one_is_created():
    arrivals = TaskArrivals()
    handler = PendingAfter(arrivals, tasks=2)
    wait = TaskWait(handler, arrivals=arrivals, wait_s=30)
    announcer = announce_later(arrivals, times=2, after_s=0.05)
    began = time.monotonic()
    response = wait(AcquireTaskRequest(), state=None)
    announcer.join()
    assert response.task.task_id == 7
    assert time.monotonic() - began < 5
    assert handler.calls <= 3  # woken by announcements, not polling


def test_a_pending_task_is_answered_at_once():
    arrivals = TaskArrivals()
    arrivals.announce()
    handler = PendingAfter(arrivals, tasks=1)
    response = TaskWait(handler, arrivals=arrivals, wait_s=30)(AcquireTaskRequest(), state=None)
    assert response.task.task_id == 7
    assert handler.calls == 1


def test_a_request_for_a_task_gives_up_after_the_wait():
    arrivals = TaskArrivals()
    handler = PendingAfter(arrivals, tasks=1)
    began = time.monotonic()
    response = TaskWait(handler, arrivals=arrivals, wait_s=0.05)(AcquireTaskRequest(), state=None)
    assert not response.HasField("task")
    assert 0.05 <= time.monotonic() - began < 5
    assert handler.calls == 2  # once at first, once when the wait ran out


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
