"""An in-memory stand-in for the portal's node API on a loopback port, per the issue-4 contract.

Hospital-side tests talk to it over real HTTP with the real PortalClient, so what they check is
what a node actually sends. The portal's own behaviour is tested in tests/portal/.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hospitals.consent import snapshot_sha256

TOKEN = "node-token-for-tests"  # noqa: S105 - a test token
_STUDY = re.compile(r"/api/node/studies/(?P<slug>[^/]+)/(?P<what>[\w/-]+)/")


@dataclass
class FakePortal:
    institution: str
    versions: list[int] = field(default_factory=lambda: [1])
    requires_current: bool = False
    protocols: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    ledger_reports: list[dict[str, Any]] = field(default_factory=list)
    readiness: dict[str, dict[str, Any]] = field(default_factory=dict)
    he_contexts: dict[str, str] = field(default_factory=dict)
    # path -> (status, body) answered instead of the normal behaviour
    failures: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    snapshot_tamper: bool = False

    def snapshot(self, study: str) -> dict[str, Any]:
        latest: dict[str, dict[str, Any]] = {}
        ordered = sorted(
            enumerate(self.records.get(study, [])),
            key=lambda item: (_moment(item[1]["decided_at"]), item[0]),
        )
        for _, record in ordered:
            latest[record["pseudonym"]] = record
        current = max(self.versions) if self.versions else None
        required = current if self.requires_current else None
        granted = sorted(
            p
            for p, r in latest.items()
            if r["status"] == "granted" and (required is None or r["form_version"] == required)
        )
        digest = snapshot_sha256(
            study=study,
            institution=self.institution,
            required_form_version=required,
            granted=granted,
        )
        if self.snapshot_tamper:
            granted = [*granted, "f" * 64]  # one pseudonym more than the hash covers
        return {
            "study": study,
            "institution": self.institution,
            "required_form_version": required,
            "granted": granted,
            "sha256": digest,
            "taken_at": datetime.now(UTC).isoformat(),
        }

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, body))
        if path in self.failures:
            return self.failures[path]
        if (method, path) == ("POST", "/api/node/heartbeat/"):
            self.heartbeats.append(body["status"])
            return 200, {}
        if (method, path) == ("GET", "/api/node/protocols/"):
            return 200, self.protocols
        if (method, path) == ("POST", "/api/node/ledger/"):
            self.ledger_reports.append(body)
            return 200, {
                "datasets": [
                    {
                        "dataset_id": d["dataset_id"],
                        "epsilon_spent": 0.0,
                        "max_lifetime_epsilon": d["max_lifetime_epsilon"],
                        "accountant": d["accountant"],
                        "conversion": "rdp-balle2020",
                    }
                    for d in body["datasets"]
                ]
            }
        match = _STUDY.fullmatch(path)
        if match is None:
            return 404, _error("not-found", f"no endpoint {path}")
        slug, what = match["slug"], match["what"]
        if (method, what) == ("GET", "consent/forms"):
            current = max(self.versions) if self.versions else None
            return 200, {
                "study": slug,
                "current_version": current,
                "requires_current": self.requires_current,
                "versions": self.versions,
            }
        if (method, what) == ("POST", "consent/records"):
            return self._record(slug, body["records"])
        if (method, what) == ("GET", "consent/snapshot"):
            return 200, self.snapshot(slug)
        if (method, what) == ("POST", "he-context"):
            self.he_contexts[slug] = body["aggregator_context"]
            return 200, {"slug": slug}
        if (method, what) == ("POST", "readiness"):
            self.readiness[slug] = body
            return 200, body
        return 404, _error("not-found", f"no endpoint {method} {path}")

    def _record(self, slug: str, records: list[dict[str, Any]]) -> tuple[int, Any]:
        fields: dict[str, list[str]] = {}
        seen: set[str] = set()
        for index, record in enumerate(records):
            if record["pseudonym"] in seen:
                fields[f"records[{index}].pseudonym"] = ["repeated in this batch"]
            seen.add(record["pseudonym"])
            version = record["form_version"]
            if version is not None and version not in self.versions:
                fields[f"records[{index}].form_version"] = [f"unknown form version {version}"]
        if fields:
            return 400, _error("invalid", "the request is invalid", fields)
        stored = self.records.setdefault(slug, [])
        created = [record for record in records if record not in stored]
        stored.extend(created)
        return 201, {"batch": 1, "created": len(created), "unchanged": len(records) - len(created)}


def _moment(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _error(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


@contextmanager
def running(portal: FakePortal) -> Iterator[FakePortal]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if self.headers.get("Authorization") != f"Node {TOKEN}":
                status, answer = 401, _error("not-authenticated", "bad node token")
            else:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, answer = portal.handle(self.command, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    portal.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield portal
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
