"""An HTTP proxy between one SuperNode and the SuperLink's Fleet API, to fail it at a chosen step.

The SuperNode talks plain HTTP/1.1 to the SuperLink (flwr/supernode/fleet_http_client.py): every
request is forwarded as it came, until one whose path `cut_at` names arrives. Then the proxy calls
`on_cut` (which kills the SuperNode) and drops that request unanswered, as a hospital that died
mid-request would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from federation.deployment import free_port

# Longer than the SuperLink holds an empty pull for messages (federation/superlink.py).
FORWARD_TIMEOUT_S = 60.0
# Hop-by-hop, or recomputed for the bytes this proxy writes.
UNFORWARDED_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class CuttingFleetProxy:
    def __init__(self, *, superlink: str, cut_at: str, on_cut: Callable[[], None]) -> None:
        self.port = free_port()
        self.cut = threading.Event()
        self.forwarded: list[str] = []  # each request's path, in the order it was forwarded
        self._upstream = httpx.Client(base_url=f"http://{superlink}", timeout=FORWARD_TIMEOUT_S)
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler(cut_at, on_cut))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> CuttingFleetProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()

    def _handler(self, cut_at: str, on_cut: Callable[[], None]) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Forward(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SuperNode's httpx client expects

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == cut_at and not proxy.cut.is_set():
                    proxy.cut.set()
                    on_cut()
                    self.close_connection = True
                    return
                proxy.forwarded.append(self.path)
                try:
                    reply = proxy._upstream.post(
                        self.path,
                        content=body,
                        headers={
                            key: value
                            for key, value in self.headers.items()
                            if key.lower() not in UNFORWARDED_HEADERS | {"host"}
                        },
                    )
                except httpx.TransportError:  # the SuperLink is not listening yet, or any more
                    self.send_error(502)
                    return
                self.send_response(reply.status_code)
                for key, value in reply.headers.items():
                    if key.lower() not in UNFORWARDED_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                try:
                    self.wfile.write(reply.content)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the SuperNode is gone: nobody to answer

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (Python's name)
                del format, args  # quiet: the SuperNode's and SuperLink's logs tell the story

        return Forward
