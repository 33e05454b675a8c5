"""The hospital node's client for the portal's node API (`Authorization: Node <token>`).

Outbound HTTPS only, standard library only. What it sends is chosen here: heartbeats, the study's
keyless HE context, and — after the stewards' release approvals — the final model with its
privacy report. Never rows, never patient identifiers.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

TIMEOUT_S = 30.0


class PortalError(RuntimeError):
    """The portal refused a request or could not be reached; the message carries its reason."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PortalClient:
    def __init__(self, *, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def heartbeat(self, status: dict[str, str | int | float | bool]) -> None:
        self._call("POST", "/api/node/heartbeat/", {"status": status})

    def approved_protocols(self) -> list[dict[str, Any]]:
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

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(  # noqa: S310 - the portal URL is the node's own setting
            f"{self.base_url}{path}",
            method=method,
            data=None if payload is None else json.dumps(payload).encode(),
            headers={"Authorization": f"Node {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
                body = response.read()
        except urllib.error.HTTPError as error:
            raise PortalError(f"{method} {path}: {_reason(error)}", status=error.code) from error
        except (urllib.error.URLError, OSError) as error:
            raise PortalError(f"{method} {path}: the portal is unreachable ({error})") from error
        return json.loads(body) if body else None


def _reason(error: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(error.read())["error"]
        return f"{error.code} {detail['code']}: {detail['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{error.code} {error.reason}"
