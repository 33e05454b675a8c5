"""`cohort-superlink`: Flower's SuperLink, holding a SuperNode's empty pull for messages."""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import SimpleNamespace

import anyio
import anyio.to_thread
import flwr.superlink.main as superlink_app
import pytest
import uvicorn
from flwr.proto.fleet_pb2 import PullMessagesRequest, PullMessagesResponse
from flwr.proto.message_pb2 import Message as MessageProto
from flwr.proto.node_pb2 import Node
from flwr.superlink.routers.control.middlewares import CONTROL_SENSITIVE_ROUTE_KEYS
from flwr.superlink.servicer.fleet import fleet_handlers
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from federation import superlink
from federation.superlink import (
    CONTROL_PATHS,
    LINK_STATES,
    MESSAGE_ARRIVALS,
    MIDDLEWARE_PATHS,
    OBJECT_STORES,
    PULL_WAIT_S,
    WORKER_THREADS,
    MessagesInFlight,
    MoreWorkerThreads,
    OnlyUnder,
    closing_held_pulls,
    install,
    main,
    message_wait,
    tracking_messages,
    tracking_objects,
)
from hospitals import server_tick
from hospitals.polling import Arrivals, HeldRequest
from tests.asgi import served


def test_install_changes_flowers_pull_handler_link_states_and_middleware(monkeypatch):
    flowers_pull = fleet_handlers.pull_messages
    flowers_middleware = superlink_app._get_middleware
    monkeypatch.setitem(vars(fleet_handlers), "pull_messages", flowers_pull)
    monkeypatch.setitem(vars(superlink_app), "_get_middleware", flowers_middleware)
    flowers_stores = {state: state.store_message_and_object_tree for state in LINK_STATES}
    for state, store in flowers_stores.items():
        monkeypatch.setattr(state, "store_message_and_object_tree", store)
    flowers_puts = {object_store: object_store.put for object_store in OBJECT_STORES}
    for object_store, put in flowers_puts.items():
        monkeypatch.setattr(object_store, "put", put)
    uvicorns_handle_exit = uvicorn.Server.handle_exit
    monkeypatch.setattr(uvicorn.Server, "handle_exit", uvicorns_handle_exit)
    monkeypatch.setattr(uvicorn.Server, "main_loop", uvicorn.Server.main_loop)
    # uvicorn.Server has no class-level should_exit; install() adds one. Set through
    # monkeypatch, it is removed again after the test (a delattr of nothing records nothing).
    monkeypatch.setattr(uvicorn.Server, "should_exit", False, raising=False)

    install()
    install()  # a second install changes nothing more

    assert isinstance(fleet_handlers.pull_messages, HeldRequest)
    assert fleet_handlers.pull_messages.handler is flowers_pull
    for state, store in flowers_stores.items():
        assert state.store_message_and_object_tree.__wrapped__ is store
    for object_store, put in flowers_puts.items():
        assert object_store.put.__wrapped__ is put
    assert uvicorn.Server.handle_exit.__wrapped__ is uvicorns_handle_exit
    assert uvicorn.Server.main_loop is server_tick.main_loop
    first, *rest = superlink_app._get_middleware()
    assert (first.cls, first.kwargs) == (MoreWorkerThreads, {"threads": WORKER_THREADS})
    assert [m.kwargs.get("middleware", m).cls for m in rest] == [
        m.cls for m in flowers_middleware()
    ]
    assert {m.kwargs["middleware"].cls for m in rest if m.cls is OnlyUnder} == set(MIDDLEWARE_PATHS)


def message(message_id: str, *, to: int, replying_to: str = "") -> SimpleNamespace:
    """What the SuperLink's changes read of a Message (a real one needs a run in progress)."""
    return SimpleNamespace(
        metadata=SimpleNamespace(
            message_id=message_id, dst_node_id=to, reply_to_message_id=replying_to
        )
    )


def nothing_held(object_id: str) -> bool:
    return False


def test_a_message_is_announced_to_its_node_once_all_its_objects_are_stored():
    arrivals = Arrivals()
    in_flight = MessagesInFlight(arrivals)
    in_flight.message_stored(message("m1", to=7), ["o1", "o2"], held=nothing_held)
    in_flight.object_stored("o1")
    in_flight.object_stored("another message's object")
    assert arrivals.count(7) == 0
    in_flight.object_stored("o2")
    in_flight.object_stored("o2")
    assert arrivals.count(7) == 1


def test_a_message_stored_whole_is_announced_at_once_and_shared_objects_complete_all():
    arrivals = Arrivals()
    in_flight = MessagesInFlight(arrivals)
    in_flight.message_stored(message("m1", to=1), [], held=nothing_held)
    # One global model for two hospitals: the same objects complete both messages.
    in_flight.message_stored(message("m2", to=2), ["model"], held=nothing_held)
    in_flight.message_stored(message("m3", to=3), ["model"], held=nothing_held)
    in_flight.object_stored("model")
    assert [arrivals.count(node) for node in (1, 2, 3)] == [1, 1, 1]


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str]]] = []
        self.objects: list[str] = []

    def message_stored(self, message: SimpleNamespace, missing: list[str], **held: object) -> None:
        self.messages.append((message.metadata.message_id, missing))

    def object_stored(self, object_id: str) -> None:
        self.objects.append(object_id)


def link_state(*, holding: set[str]) -> SimpleNamespace:
    """What `tracking_messages` reads of a LinkState: its object store, holding these objects."""
    return SimpleNamespace(
        object_store=SimpleNamespace(get=lambda object_id: b"content" * (object_id in holding))
    )


def test_only_instructions_the_state_stored_are_tracked(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr("federation.superlink.MESSAGES_IN_FLIGHT", recorder)
    outcomes = {"stored": (True, ["o"]), "refused": (False, []), "reply": (True, ["r"])}
    store = tracking_messages(lambda state, msg, tree, session: outcomes[msg.metadata.message_id])
    state = link_state(holding=set())
    for message_id in outcomes:
        replying_to = "m0" if message_id == "reply" else ""
        result = store(state, message(message_id, to=5, replying_to=replying_to), None, "session")
        assert result == outcomes[message_id]
    assert recorder.messages == [("stored", ["o"])]


def test_an_object_stored_while_its_message_was_being_stored_counts():
    # Another message's push stored the shared object between this message's preregistration
    # and its tracking: no later put would tell of it.
    arrivals = Arrivals()
    in_flight = MessagesInFlight(arrivals)
    in_flight.message_stored(message("m6", to=6), ["shared", "own"], held={"shared"}.__contains__)
    assert arrivals.count(6) == 0
    in_flight.object_stored("own")
    assert arrivals.count(6) == 1


def test_a_tracked_message_asks_its_state_which_objects_it_holds_already():
    before = MESSAGE_ARRIVALS.count(6)
    store = tracking_messages(lambda state, msg, tree, session: (True, ["shared"]))
    store(link_state(holding={"shared"}), message("m6", to=6), None, "session")
    assert MESSAGE_ARRIVALS.count(6) == before + 1


def test_an_object_is_tracked_only_once_stored(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr("federation.superlink.MESSAGES_IN_FLIGHT", recorder)

    def put(store: object, object_id: str, content: bytes) -> None:
        if not content:
            raise ValueError("content does not match its id")

    put_and_track = tracking_objects(put)
    put_and_track(None, "good", b"bytes")
    with pytest.raises(ValueError, match="does not match"):
        put_and_track(None, "bad", b"")
    assert recorder.objects == ["good"]


def test_an_empty_pull_waits_for_a_message_to_its_node():
    node_id = 4242
    pulls: list[int] = []

    def flowers_pull(request: PullMessagesRequest, **handles: object) -> PullMessagesResponse:
        pulls.append(request.node.node_id)
        if MESSAGE_ARRIVALS.count(node_id) == 0:
            return PullMessagesResponse()
        return PullMessagesResponse(messages_list=[MessageProto()])

    def send_later() -> None:
        time.sleep(0.05)
        MESSAGE_ARRIVALS.announce(node_id)

    sender = threading.Thread(target=send_later)
    sender.start()
    began = time.monotonic()
    response = message_wait(flowers_pull)(
        request=PullMessagesRequest(node=Node(node_id=node_id)), state=None, store=None
    )
    sender.join()
    assert len(response.messages_list) == 1
    assert time.monotonic() - began < PULL_WAIT_S
    assert pulls == [node_id, node_id]


def test_worker_threads_are_raised_as_the_app_starts():
    limits: list[float] = []

    async def app(scope: object, receive: object, send: object) -> None:
        limits.append(anyio.to_thread.current_default_thread_limiter().total_tokens)

    anyio.run(MoreWorkerThreads(app, threads=123), {"type": "lifespan"}, None, None)
    assert limits == [123]


async def echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.url.path, headers={"x-echo": "1"})


@pytest.mark.parametrize("flowers", list(MIDDLEWARE_PATHS), ids=lambda cls: cls.__name__)
def test_flowers_middleware_leaves_requests_outside_its_paths_alone(flowers, monkeypatch):
    # What makes skipping it there safe; a Flower upgrade that changes this fails here.
    monkeypatch.delenv("FLWR_TRACING_ENABLED", raising=False)
    app = Starlette(routes=[Route("/v1/{api}/{call}", echo, methods=["POST"])])
    app.state.fleet_event_log_plugin = None
    outside = next(
        path
        for path in ("/v1/control/list-runs", "/v1/fleet/pull-messages", "/v1/runtime/get-run")
        if not path.startswith(MIDDLEWARE_PATHS[flowers])
    )
    assert served(flowers(app), outside) == served(app, outside)


def test_control_routes_that_flower_treats_apart_are_all_control_paths():
    assert all(path.startswith(CONTROL_PATHS) for _, path in CONTROL_SENSITIVE_ROUTE_KEYS)


class Marking:
    """Middleware that marks the responses it sees."""

    def __init__(self, app: ASGIApp, mark: str) -> None:
        self.app = app
        self.mark = mark

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-mark", self.mark.encode())]
            await send(message)

        await self.app(scope, receive, marked)


def test_scoped_middleware_runs_only_under_its_prefix():
    app = Starlette(routes=[Route("/v1/{api}/{call}", echo, methods=["POST"])])
    only_fleet = OnlyUnder(app, middleware=Middleware(Marking, mark="fleet"), prefix="/v1/fleet/")
    assert (b"x-mark", b"fleet") in served(only_fleet, "/v1/fleet/pull-messages")[2]
    assert b"x-mark" not in dict(served(only_fleet, "/v1/runtime/pull-messages")[2])


def test_the_command_is_flowers_superlink_with_the_change_installed(monkeypatch):
    calls: list[object] = []
    monkeypatch.setattr(sys, "argv", ["cohort-superlink"])
    monkeypatch.setattr("federation.superlink.install", lambda: calls.append("install"))
    monkeypatch.setattr("federation.superlink.flower_superlink", lambda: calls.append(sys.argv))
    assert main(["--insecure", "--port", "9093"]) == 0
    assert calls == ["install", ["flower-superlink", "--insecure", "--port", "9093"]]


def test_a_signal_to_stop_ends_the_held_pulls_before_uvicorn_stops(monkeypatch):
    arrivals = Arrivals()
    monkeypatch.setattr(superlink, "MESSAGE_ARRIVALS", arrivals)
    handled: list[tuple[int, bool]] = []
    handle_exit = closing_held_pulls(
        lambda server, sig, frame: handled.append((sig, arrivals.closed))
    )

    handle_exit(None, signal.SIGTERM, None)

    assert handled == [(signal.SIGTERM, True)]
