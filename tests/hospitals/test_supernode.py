"""`cohort-supernode`: Flower's SuperNode, polling with an idle backoff."""

from __future__ import annotations

import ast
import inspect
import time
from functools import partial

import flwr.supercore.routers.runtime.tracing as flower_tracing
import flwr.supernode.main as supernode_app
import flwr.supernode.start_client_internal as supernode_loop
import pytest
import uvicorn
from flwr.proto.runtime_pb2 import PullTaskInputResponse
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import exit_handler
from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
from flwr.supercore.protobuf.translation import ProtobufTranslationMiddleware
from flwr.supercore.routers.runtime.tracing import RuntimeTracingMiddleware
from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState
from flwr.supernode.servicer.runtime import runtime_handlers
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from hospitals import server_tick
from hospitals.polling import OBJECT_RETRY_FIRST_S, HeldRequest, IdleBackoff
from hospitals.supernode import (
    FLOWER_CREATE_TASK,
    FLOWER_IDLE_WAIT_S,
    FLOWER_REPLY_CHECK_S,
    REPLY_CHECK_S,
    TASK_ARRIVALS,
    TASK_WAIT_S,
    TRACING_SWITCH,
    SuperNodeClock,
    install,
    parser,
    untraced_unless_enabled,
)
from tests.asgi import served


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


class Timeline:
    """A clock that moves only when told, or when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self, backoff: IdleBackoff) -> SuperNodeClock:
        return SuperNodeClock(backoff, sleep=self.sleep, monotonic=self.monotonic)


def test_idle_waits_back_off_and_a_reply_check_restarts_them():
    timeline = Timeline()
    clock = timeline.clock(IdleBackoff(first_s=0.1, longest_s=0.3, factor=2))
    for _ in range(3):
        clock.sleep(FLOWER_IDLE_WAIT_S)
    clock.sleep(FLOWER_REPLY_CHECK_S)
    clock.sleep(FLOWER_IDLE_WAIT_S)
    clock.sleep(7)
    assert timeline.slept == [0.1, 0.2, 0.3, REPLY_CHECK_S, 0.1, 7]


def test_an_idle_wait_counts_from_the_start_of_the_empty_pull():
    timeline = Timeline()
    clock = timeline.clock(IdleBackoff(first_s=0.1, longest_s=1.0, factor=2))
    timeline.now += 0.05  # a pull answered at once: the rest of the wait follows
    clock.sleep(FLOWER_IDLE_WAIT_S)
    timeline.now += 2.0  # a pull the SuperLink held until its wait ran out: the next one at once
    clock.sleep(FLOWER_IDLE_WAIT_S)
    assert timeline.slept == pytest.approx([0.05])


def test_the_clock_lends_the_rest_of_the_time_module():
    clock = SuperNodeClock(IdleBackoff())
    assert clock.monotonic is time.monotonic


def test_install_changes_only_flowers_supernode_loop_task_handler_state_and_ticks(monkeypatch):
    flowers_acquire = runtime_handlers.acquire_task
    monkeypatch.setattr(uvicorn.Server, "main_loop", uvicorn.Server.main_loop)
    # uvicorn.Server has no class-level should_exit; install() adds one. Set through
    # monkeypatch, it is removed again after the test (a delattr of nothing records nothing).
    monkeypatch.setattr(uvicorn.Server, "should_exit", False, raising=False)
    monkeypatch.setitem(vars(supernode_loop), "time", time)
    monkeypatch.setitem(vars(supernode_loop), "pull_objects", supernode_loop.pull_objects)
    monkeypatch.setitem(vars(runtime_handlers), "acquire_task", flowers_acquire)
    monkeypatch.setattr(InMemoryNodeState, "create_task", FLOWER_CREATE_TASK)
    monkeypatch.setattr(exit_handler, "registered_exit_handlers", [])
    flowers_create_app = supernode_app.create_app
    monkeypatch.setitem(vars(supernode_app), "create_app", flowers_create_app)
    install(IdleBackoff())
    install(IdleBackoff())  # a second install changes nothing more
    assert isinstance(supernode_loop.time, SuperNodeClock)
    assert isinstance(supernode_loop.pull_objects, partial)
    assert supernode_loop.pull_objects.keywords["initial_backoff"] == OBJECT_RETRY_FIRST_S
    assert time.sleep is not supernode_loop.time.sleep  # the real module is untouched
    assert isinstance(runtime_handlers.acquire_task, HeldRequest)
    assert runtime_handlers.acquire_task.handler is flowers_acquire
    assert runtime_handlers.acquire_task.wait_s == TASK_WAIT_S
    assert InMemoryNodeState.create_task.__wrapped__ is FLOWER_CREATE_TASK
    assert uvicorn.Server.main_loop is server_tick.main_loop
    assert supernode_app.create_app.__wrapped__ is flowers_create_app
    # On SIGTERM the held requests end first, before Flower's handler that stops the Runtime API.
    assert exit_handler.registered_exit_handlers == [
        exit_handler._RegisteredExitHandler(TASK_ARRIVALS.close, run_before_force_exit=True)
    ]

    state = InMemoryNodeState(InMemoryObjectStore())
    before = TASK_ARRIVALS.count()
    state.create_task(task_type=TaskType.CLIENT_APP, run_id=1, fab_hash="f")
    assert TASK_ARRIVALS.count() == before + 1


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


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def middleware_of(app: Starlette) -> list[type]:
    return [each.cls for each in app.user_middleware]


def test_the_runtime_api_leaves_out_flowers_tracing_middleware_while_tracing_is_off(monkeypatch):
    create_app = untraced_unless_enabled(supernode_app.create_app)
    monkeypatch.delenv(TRACING_SWITCH, raising=False)
    assert RuntimeTracingMiddleware not in middleware_of(create_app())
    assert ProtobufTranslationMiddleware in middleware_of(create_app())
    monkeypatch.setenv(TRACING_SWITCH, "1")
    assert RuntimeTracingMiddleware in middleware_of(create_app())


def test_flowers_tracing_middleware_touches_nothing_while_tracing_is_off(monkeypatch):
    # What makes leaving it out safe; a Flower upgrade that traces regardless fails here.
    contexts_loaded: list[int] = []

    def load_task_context(state: object, task_id: int) -> str:
        contexts_loaded.append(task_id)
        return TRACEPARENT

    async def pull_task_input(request: Request) -> PlainTextResponse:
        request.state.protobuf_response = PullTaskInputResponse(task_id=7)
        return PlainTextResponse("input")

    monkeypatch.setattr(flower_tracing, "load_task_context", load_task_context)
    monkeypatch.setattr(flower_tracing, "get_runtime_state", lambda request: None)
    app = Starlette(
        routes=[Route("/v1/runtime/pull-task-input", pull_task_input, methods=["POST"])]
    )
    middleware = RuntimeTracingMiddleware(app)

    monkeypatch.delenv(TRACING_SWITCH, raising=False)
    untraced = served(middleware, "/v1/runtime/pull-task-input")
    monkeypatch.setenv(TRACING_SWITCH, "1")
    traced = served(middleware, "/v1/runtime/pull-task-input")

    assert untraced == served(app, "/v1/runtime/pull-task-input")
    assert (b"traceparent", TRACEPARENT.encode()) in traced[2]
    assert contexts_loaded == [7]  # only while tracing was on
