"""The hospital node's client for the portal's node API (`Authorization: Node <token>`).

Outbound HTTPS only, standard library only. What it sends is chosen here: heartbeats, the study's
keyless HE context, consent decisions under pseudonyms, the privacy ledger's entries, readiness
reports and — after the stewards' release approvals — the final model with its privacy report.
Never rows, never patient identifiers.

Given a transcript path, the client appends every request it makes (time, method, URL, body) to
that file as one JSON line *before* sending it, so the hospital's auditors can see everything that
left the node. Nodes always keep one (`NodeSettings.outbound_log_path`).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hospitals.node import NodeConfigError, NodeSettings

TIMEOUT_S = 30.0
MAX_FIELDS_SHOWN = 10


class PortalError(RuntimeError):
    """The portal refused a request or could not be reached; the message carries its reason."""

    def __init__(
        self, message: str, *, status: int | None = None, fields: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        # The portal's per-field problems, e.g. {"records[12].form_version": ["unknown …"]}.
        self.fields = fields or {}


class PortalClient:
    def __init__(self, *, base_url: str, token: str, transcript: Path | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.transcript = transcript

    @classmethod
    def for_node(cls, node: NodeSettings) -> PortalClient:
        """The node's client: its portal-url and token, recording to its outbound transcript."""
        if not node.portal_url:
            raise PortalError(
                f"node '{node.hospital}' has no portal-url in its node config; add "
                'portal-url = "https://…" to reach the portal'
            )
        try:
            token = node.portal_token()
        except NodeConfigError as error:
            raise PortalError(str(error)) from error
        return cls(base_url=node.portal_url, token=token, transcript=node.outbound_log_path)

    def heartbeat(self, status: dict[str, str | int | float | bool]) -> None:
        self._call("POST", "/api/node/heartbeat/", {"status": status})

    def approved_protocols(self) -> list[dict[str, Any]]:
        """Studies whose current protocol this hospital approved: slug, state, protocol (the
        document, with its encryption block once pinned), protocol_sha256 (the approval hash)."""
        answer = self._call("GET", "/api/node/protocols/")
        return list(answer["results"] if isinstance(answer, dict) else answer)

    def upload_he_context(self, *, study_slug: str, aggregator_context: bytes) -> None:
        payload = {"aggregator_context": base64.b64encode(aggregator_context).decode("ascii")}
        self._call("POST", f"/api/node/studies/{study_slug}/he-context/", payload)

    def upload_release(
        self, *, run_id: int, parameters: bytes, privacy_report: dict[str, Any]
    ) -> None:
        payload = {
            "parameters": base64.b64encode(parameters).decode("ascii"),
            "privacy_report": privacy_report,
        }
        self._call("POST", f"/api/node/runs/{run_id}/release/", payload)

    def consent_forms(self, *, study_slug: str) -> dict[str, Any]:
        """`{"study", "current_version", "requires_current", "versions"}` of the study."""
        return self._object("GET", f"/api/node/studies/{study_slug}/consent/forms/")

    def record_consent(self, *, study_slug: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Uploads consent decisions under pseudonyms, all or nothing: `{batch, created,
        unchanged}`."""
        return self._object(
            "POST", f"/api/node/studies/{study_slug}/consent/records/", {"records": records}
        )

    def consent_snapshot(self, *, study_slug: str) -> dict[str, Any]:
        """The pseudonyms with current consent to the study at this node's institution."""
        return self._object("GET", f"/api/node/studies/{study_slug}/consent/snapshot/")

    def report_ledger(self, report: dict[str, Any]) -> dict[str, Any]:
        """Mirrors the node's privacy ledger (`{"datasets": [...]}`) at the portal."""
        return self._object("POST", "/api/node/ledger/", report)

    def report_readiness(self, *, study_slug: str, report: dict[str, Any]) -> dict[str, Any]:
        """The node's own view of whether it can take part in the study's next run."""
        return self._object("POST", f"/api/node/studies/{study_slug}/readiness/", report)

    def _object(
        self, method: str, path: str, payload: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        answer = self._call(method, path, payload)
        if not isinstance(answer, dict):
            raise PortalError(f"{method} {path}: the portal answered with no JSON object")
        return answer

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        url = f"{self.base_url}{path}"
        self._record(method=method, url=url, path=path, payload=payload)
        request = urllib.request.Request(  # noqa: S310 - the portal URL is the node's own setting
            url,
            method=method,
            data=body,
            headers={"Authorization": f"Node {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
                answer = response.read()
        except urllib.error.HTTPError as error:
            reason, fields = _reason(error)
            raise PortalError(
                f"{method} {path}: {reason}", status=error.code, fields=fields
            ) from error
        except (urllib.error.URLError, OSError) as error:
            raise PortalError(f"{method} {path}: the portal is unreachable ({error})") from error
        try:
            return json.loads(answer) if answer else None
        except ValueError as error:
            raise PortalError(f"{method} {path}: the portal's answer is not JSON") from error

    def _record(self, *, method: str, url: str, path: str, payload: dict[str, Any] | None) -> None:
        if self.transcript is None:
            return
        line = json.dumps(
            {
                "time": datetime.now(UTC).isoformat(),
                "method": method,
                "url": url,
                "path": path,
                "body": payload,
            },
            sort_keys=True,
        )
        self.transcript.parent.mkdir(parents=True, exist_ok=True)
        # One write per request on an O_APPEND descriptor, so concurrent rounds never interleave.
        descriptor = os.open(self.transcript, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, (line + "\n").encode())
        finally:
            os.close(descriptor)


def _reason(error: urllib.error.HTTPError) -> tuple[str, dict[str, Any]]:
    try:
        detail = json.loads(error.read())["error"]
        message = f"{error.code} {detail['code']}: {detail['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{error.code} {error.reason}", {}
    fields = detail.get("fields")
    if not isinstance(fields, dict) or not fields:
        return message, {}
    shown = [f"{key}: {value}" for key, value in list(fields.items())[:MAX_FIELDS_SHOWN]]
    if len(fields) > MAX_FIELDS_SHOWN:
        shown.append(f"and {len(fields) - MAX_FIELDS_SHOWN} more")
    return f"{message} ({'; '.join(shown)})", fields
