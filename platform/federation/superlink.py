"""`cohort-superlink`: Flower's `flower-superlink`, holding a SuperNode's empty pull for messages.

Flower 1.41's Fleet API answers a SuperNode's PullMessages at once, empty or not, so a SuperNode
hears of its next message only when it next asks: every SuperNode then trades latency (each of a
round's exchange waits for a poll) against load (with 10 hospitals, two thirds of the
SuperLink's requests were empty pulls, each ~4 ms of its CPU). This entry point runs Flower's own
SuperLink, arguments and all, with two changes. A pull that finds no message waits up to
`PULL_WAIT_S` for one addressed to its node (`message_wait`). A message is announced to its node's
held pull (`MESSAGE_ARRIVALS`) once the SuperLink holds it and all its objects
(`MESSAGES_IN_FLIGHT`), so the pull answers as soon as the ServerApp has sent. `cohort-supernode`,
seeing its pull held, asks again at once: a message reaches its SuperNode within milliseconds, and
an idle SuperNode asks once per `PULL_WAIT_S`. Any SuperNode works with it unchanged; a stock one
keeps its own polling interval. And each of Flower's middlewares that acts only on the Control,
Fleet or Runtime API runs only there (`MIDDLEWARE_PATHS`): a Fleet request passed through nine
layers of them, four of which only ever touch Control requests, at ~0.3 ms of CPU each. Its
server, idle, wakes once a second instead of ten times (`hospitals.server_tick`).

    cohort-superlink <flower-superlink arguments>

FastAPI runs Flower's handlers in anyio's worker threads, 40 at most by default, and a held pull
keeps its thread: the app raises the limit to `WORKER_THREADS` as it starts (`MoreWorkerThreads`),
so held pulls never queue the requests of SuperNodes busy with a round. A SuperNode holds at most
one pull at a time (its loop pulls, then handles what it got), and threads start only when needed.

The changes reach Flower through `fleet_handlers.pull_messages`, the LinkStates'
`store_message_and_object_tree`, the ObjectStores' `put` and `flwr.superlink.main._get_middleware`
(the app's middleware, which also sees its start-up); `install` refuses a Flower without the first
or the last. On SIGTERM or SIGINT, uvicorn's `Server.handle_exit` ends the held pulls first
(`closing_held_pulls`), so the SuperLink stops without waiting out their holds.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any

import anyio.to_thread
import flwr.superlink.main as superlink_app
import uvicorn
from flwr.app import Message
from flwr.proto.fleet_pb2 import PullMessagesRequest, PullMessagesResponse
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
from flwr.supercore.object_store.sql_object_store import SqlObjectStore
from flwr.supercore.routers.runtime.tracing import RuntimeTracingMiddleware
from flwr.superlink.cli import flower_superlink
from flwr.superlink.routers.control.middlewares import (
    ControlAuthenticationMiddleware,
    ControlEventLogMiddleware,
    ControlLicenseMiddleware,
    ControlSensitiveResponseMiddleware,
)
from flwr.superlink.routers.fleet.middlewares import FleetEventLogMiddleware
from flwr.superlink.routers.fleet.node_auth import NodeAuthMiddleware
from flwr.superlink.servicer.fleet import fleet_handlers
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from hospitals.polling import Arrivals, HeldRequest, replace_in_flower
from hospitals.server_tick import slow_idle_ticks

# An idle SuperNode costs the SuperLink one request per PULL_WAIT_S, and a request costs far more
# than a held pull: idle with 3 and 10 SuperNodes, the SuperLink used 9.7 and 16.3 ms of CPU a
# second at 4 s (and uvicorn's 0.1 s tick), 4.7 and 9.2 at 15 s (and a 1 s tick). Half the
# SuperNode's 30 s HTTP timeout; a stop ends the held pulls at once (`closing_held_pulls`).
PULL_WAIT_S = 15.0
# anyio's worker threads (Flower's default is anyio's 40): room for a held pull per SuperNode.
WORKER_THREADS = 1000
CONTROL_PATHS = "/v1/control/"
LINK_STATES = (InMemoryLinkState, SqlLinkState)
OBJECT_STORES = (InMemoryObjectStore, SqlObjectStore)
# The paths outside of which each of these Flower middlewares passes a request on untouched (see
# their dispatch methods): skipping them there saves the SuperLink ~0.3 ms of CPU per layer, on
# every Fleet and Runtime request. tests/federation/test_superlink.py checks them on each upgrade.
MIDDLEWARE_PATHS: dict[object, str] = {
    ControlSensitiveResponseMiddleware: CONTROL_PATHS,
    ControlAuthenticationMiddleware: CONTROL_PATHS,
    ControlLicenseMiddleware: CONTROL_PATHS,
    ControlEventLogMiddleware: CONTROL_PATHS,
    RuntimeTracingMiddleware: "/v1/runtime/",
    NodeAuthMiddleware: "/v1/fleet/",
    FleetEventLogMiddleware: "/v1/fleet/",
}
StoreMessage = Callable[..., tuple[bool, list[str]]]
PutObject = Callable[..., None]
HandleExit = Callable[[uvicorn.Server, int, FrameType | None], None]

#: This process's: each message complete at the SuperLink, announced for its destination node.
MESSAGE_ARRIVALS = Arrivals()


def message_wait(
    pull_messages: Callable[..., PullMessagesResponse],
) -> HeldRequest[PullMessagesRequest, PullMessagesResponse]:
    """Flower's PullMessages handler, answering "no message" only after `PULL_WAIT_S` without one
    for the pulling node."""
    return HeldRequest(
        pull_messages,
        has_work=lambda response: len(response.messages_list) > 0,
        arrivals=MESSAGE_ARRIVALS,
        wait_s=PULL_WAIT_S,
        recipient=lambda request: request.node.node_id,
    )


class MessagesInFlight:
    """Announces each message stored for a SuperNode once the SuperLink holds all its objects.

    The ServerApp stores a message, then pushes its objects several at a time; a SuperNode that
    pulled the message at once would ask for the missing objects again and again, backing off.
    A message whose objects never all come is never announced: the SuperNode gets it at its next
    pull, as from Flower's own SuperLink.
    """

    def __init__(self, arrivals: Arrivals) -> None:
        self._arrivals = arrivals
        self._lock = threading.Lock()
        # message id → (its destination node, the ids of its objects not stored yet)
        self._incomplete: dict[str, tuple[int, set[str]]] = {}

    def message_stored(
        self, message: Message, missing_objects: Iterable[str], *, held: Callable[[str], bool]
    ) -> None:
        """`missing_objects` were missing as the message was stored; `held` says whether the
        SuperLink holds an object now."""
        node_id = message.metadata.dst_node_id
        missing = set(missing_objects)
        if not missing:
            self._arrivals.announce(node_id)
            return
        with self._lock:
            self._incomplete[message.metadata.message_id] = (node_id, missing)
        # Another message sharing an object may have stored it since; from here on,
        # `object_stored` sees each one.
        for object_id in [object_id for object_id in list(missing) if held(object_id)]:
            self.object_stored(object_id)

    def object_stored(self, object_id: str) -> None:
        complete: list[int] = []
        with self._lock:
            for message_id, (node_id, missing) in list(self._incomplete.items()):
                missing.discard(object_id)
                if not missing:
                    del self._incomplete[message_id]
                    complete.append(node_id)
        for node_id in complete:
            self._arrivals.announce(node_id)


#: This process's: messages the ServerApp stored, announced when complete (see `install`).
MESSAGES_IN_FLIGHT = MessagesInFlight(MESSAGE_ARRIVALS)


def tracking_messages(store: StoreMessage) -> StoreMessage:
    """A LinkState's `store_message_and_object_tree`, telling `MESSAGES_IN_FLIGHT` of each message
    it stores for a SuperNode. It tells once the call has returned: the message and its object
    tree are then stored together (the in-memory state's lock released, the SQL state's
    transaction committed), so the pull it wakes finds both."""

    @functools.wraps(store)
    def store_and_track(state: Any, message: Message, *args: Any) -> tuple[bool, list[str]]:
        stored, missing_objects = store(state, message, *args)
        if stored and not message.metadata.reply_to_message_id:
            MESSAGES_IN_FLIGHT.message_stored(
                message,
                missing_objects,
                held=lambda object_id: bool(state.object_store.get(object_id)),
            )
        return stored, missing_objects

    return store_and_track


def tracking_objects(put: PutObject) -> PutObject:
    """An ObjectStore's `put`, telling `MESSAGES_IN_FLIGHT` of each object it stores."""

    @functools.wraps(put)
    def put_and_track(store: Any, object_id: str, *args: Any) -> None:
        put(store, object_id, *args)
        MESSAGES_IN_FLIGHT.object_stored(object_id)

    return put_and_track


def closing_held_pulls(handle_exit: HandleExit) -> HandleExit:
    """uvicorn's `Server.handle_exit` (its SIGTERM and SIGINT handler), ending every held pull
    first: uvicorn's graceful stop waits for the requests in flight, and the held pulls of
    SuperNodes that stopped already would keep it waiting up to `PULL_WAIT_S`."""

    @functools.wraps(handle_exit)
    def close_and_exit(server: uvicorn.Server, sig: int, frame: FrameType | None) -> None:
        MESSAGE_ARRIVALS.close()
        handle_exit(server, sig, frame)

    return close_and_exit


class MoreWorkerThreads:
    """ASGI middleware that, as the app starts, lets anyio run `threads` handlers at once."""

    def __init__(self, app: ASGIApp, threads: int) -> None:
        self.app = app
        self.threads = threads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # The limiter belongs to the running event loop: it exists only from here on.
            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
        await self.app(scope, receive, send)


class OnlyUnder:
    """ASGI middleware that runs `middleware` only for HTTP requests under the path `prefix`;
    the others go straight to the app."""

    def __init__(self, app: ASGIApp, *, middleware: Middleware, prefix: str) -> None:
        self.app = app
        self.scoped = middleware.cls(app, *middleware.args, **middleware.kwargs)
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
        else:
            await self.scoped(scope, receive, send)


def scoped(middleware: Middleware) -> Middleware:
    """`middleware`, running only under the paths it acts on (`MIDDLEWARE_PATHS`)."""
    prefix = MIDDLEWARE_PATHS.get(middleware.cls)
    if prefix is None:
        return middleware
    return Middleware(OnlyUnder, middleware=middleware, prefix=prefix)


def cohort_middleware(
    get_middleware: Callable[[], list[Middleware]],
) -> Callable[[], list[Middleware]]:
    """Flower's middleware, in its order, each scoped to its paths, behind `MoreWorkerThreads`."""

    @functools.wraps(get_middleware)
    def middleware() -> list[Middleware]:
        return [
            Middleware(MoreWorkerThreads, threads=WORKER_THREADS),
            *(scoped(each) for each in get_middleware()),
        ]

    return middleware


def install() -> None:
    """Make Flower's SuperLink, in this process, hold empty pulls for messages (`message_wait`)."""
    if not isinstance(fleet_handlers.pull_messages, HeldRequest):
        replace_in_flower(
            fleet_handlers, "pull_messages", message_wait(fleet_handlers.pull_messages)
        )
    for state in LINK_STATES:
        if not hasattr(state.store_message_and_object_tree, "__wrapped__"):
            state.store_message_and_object_tree = tracking_messages(  # type: ignore[method-assign]
                state.store_message_and_object_tree
            )
    for object_store in OBJECT_STORES:
        if not hasattr(object_store.put, "__wrapped__"):
            object_store.put = tracking_objects(object_store.put)  # type: ignore[method-assign]
    if not hasattr(uvicorn.Server.handle_exit, "__wrapped__"):
        uvicorn.Server.handle_exit = closing_held_pulls(uvicorn.Server.handle_exit)  # type: ignore[method-assign, assignment]
    slow_idle_ticks()
    flowers_middleware = superlink_app._get_middleware
    if not hasattr(flowers_middleware, "__wrapped__"):
        replace_in_flower(superlink_app, "_get_middleware", cohort_middleware(flowers_middleware))


def main(argv: Sequence[str] | None = None) -> int:
    install()
    # Flower's command line reads sys.argv itself.
    sys.argv = ["flower-superlink", *(sys.argv[1:] if argv is None else argv)]
    flower_superlink()
    return 0
