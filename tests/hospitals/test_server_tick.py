"""uvicorn servers that tick every `SERVER_TICK_S` while idle, and stop at once when told."""

from __future__ import annotations

import ast
import asyncio
import inspect
import threading
import time

import httpx
import pytest
import uvicorn
import uvicorn.server
from fastapi import FastAPI

from hospitals import server_tick
from hospitals.server_tick import WakingExitFlag, main_loop


def uvicorn_function(name: str) -> ast.AsyncFunctionDef:
    """The installed uvicorn's own `Server.<name>`, whatever this process has patched."""
    tree = ast.parse(inspect.getsource(uvicorn.server))
    server = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Server")
    return next(n for n in server.body if isinstance(n, ast.AsyncFunctionDef) and n.name == name)


def test_the_installed_uvicorn_ticks_as_the_replacement_expects():
    # An upgrade of uvicorn that changes its loop fails here, not silently in a stale Date header.
    loop_source = ast.unparse(uvicorn_function("main_loop"))
    assert "await asyncio.sleep(0.1)" in loop_source
    assert "counter % 864000" in loop_source
    assert "await self.on_tick(counter)" in loop_source
    assert "if counter % 10 == 0:" in ast.unparse(uvicorn_function("on_tick"))


class TickRecorder:
    """What `main_loop` needs of a uvicorn server: the exit flag, and `on_tick`."""

    should_exit = WakingExitFlag()

    def __init__(self) -> None:
        self.counters: list[int] = []
        self.ticked = threading.Event()

    async def on_tick(self, counter: int) -> bool:
        self.counters.append(counter)
        self.ticked.set()
        return bool(self.should_exit)


def test_exit_set_from_another_thread_wakes_the_loop_before_its_tick(monkeypatch):
    monkeypatch.setattr(server_tick, "SERVER_TICK_S", 600.0)
    server = TickRecorder()
    loop = threading.Thread(target=lambda: asyncio.run(main_loop(server)))  # type: ignore[arg-type]
    loop.start()
    assert server.ticked.wait(10)

    server.should_exit = True
    loop.join(10)

    assert not loop.is_alive()
    # The first tick, then the one the exit woke: each refreshes uvicorn's Date header.
    assert server.counters == [0, 10]


def test_each_tick_refreshes_the_date_header(monkeypatch):
    monkeypatch.setattr(server_tick, "SERVER_TICK_S", 0.01)

    class StopsAfterFourTicks(TickRecorder):
        async def on_tick(self, counter: int) -> bool:
            await super().on_tick(counter)
            return len(self.counters) == 4

    server = StopsAfterFourTicks()
    asyncio.run(main_loop(server))  # type: ignore[arg-type]

    assert server.counters == [0, 10, 20, 30]


def test_a_stopped_servers_flag_can_still_be_set():
    server = TickRecorder()
    asyncio.run(main_loop_until_first_tick(server))

    server.should_exit = True  # its loop has closed: nothing to wake, and no error

    assert server.should_exit is True


async def main_loop_until_first_tick(server: TickRecorder) -> None:
    task = asyncio.create_task(main_loop(server))  # type: ignore[arg-type]
    while not server.counters:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_real_server_answers_and_stops_when_told_from_another_thread(monkeypatch):
    monkeypatch.setattr(server_tick, "SERVER_TICK_S", 600.0)
    monkeypatch.setattr(uvicorn.Server, "main_loop", main_loop)
    monkeypatch.setattr(uvicorn.Server, "should_exit", WakingExitFlag(), raising=False)
    app = FastAPI()
    app.get("/ping")(lambda: {"pong": True})
    # No WebSocket support: importing the websockets package warns of its deprecated parts.
    config = uvicorn.Config(app, host="127.0.0.1", port=0, ws="none", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]

    response = httpx.get(f"http://127.0.0.1:{port}/ping")
    server.should_exit = True  # as Flower's SuperNode stops its Runtime API
    thread.join(30)

    assert response.json() == {"pong": True}
    assert "date" in response.headers
    assert not thread.is_alive()
