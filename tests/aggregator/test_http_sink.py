"""The aggregator reports to the portal over HTTP: retries, never crashes the round loop."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aggregator.config import AggregatorConfig, ConfigError
from aggregator.results import HospitalRound, HttpResultsSink, JsonlResultsSink, RoundResult
from aggregator.server_app import results_sink
from federation.deployment import free_port
from federation.runner import StudyRequest, write_run_config


class Portal:
    """Answers each POST with the next status in `answers` (the last one forever)."""

    def __init__(self) -> None:
        self.answers = [202]
        self.received: list[tuple[dict[str, str], dict]] = []
        portal = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                portal.received.append((dict(self.headers), body))
                status = portal.answers.pop(0) if len(portal.answers) > 1 else portal.answers[0]
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b'{"error": {"message": "nope"}}')

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/runs/7/events/"


@pytest.fixture
def portal() -> Iterator[Portal]:
    portal = Portal()
    thread = threading.Thread(target=portal.server.serve_forever, daemon=True)
    thread.start()
    yield portal
    portal.server.shutdown()
    portal.server.server_close()


def sink(url: str) -> HttpResultsSink:
    return HttpResultsSink(url, "run_abc_secret", attempts=3, backoff_s=0.01, timeout_s=2)


def a_round() -> RoundResult:
    report = HospitalRound(
        "hospital-a",
        1.5,
        1.1,
        0.05,
        20,
        1e-5,
        "rdp",
        "rdp-balle2020",
        "waived: test",
        150,
        2048,
        1.0,
    )
    return RoundResult(
        1, ["hospital-a"], {"hospital-b": "refused"}, {"loss": 0.4}, [report], 9, 2.0
    )


def test_each_event_is_posted_as_json_with_the_run_token(portal):
    reporter = sink(portal.url)
    reporter.run_started(study_id="s", rounds=2)
    reporter.round_completed(a_round())
    reporter.run_finished(status="failed", reason="why")

    events = [body for _, body in portal.received]
    assert [e["event"] for e in events] == ["run-started", "round", "run-finished"]
    assert all(headers["Authorization"] == "Run run_abc_secret" for headers, _ in portal.received)
    assert portal.received[0][0]["Content-Type"] == "application/json"
    assert events[1]["hospitals"][0]["epsilon"] == 1.5
    assert events[1]["dropped"] == {"hospital-b": "refused"}
    assert events[2]["reason"] == "why" and "at" in events[2]


def test_server_errors_are_retried_until_accepted(portal):
    portal.answers = [503, 500, 202]
    assert sink(portal.url)._post({"event": "round"})
    assert len(portal.received) == 3


def test_a_refused_event_is_not_retried_and_does_not_raise(portal, capsys):
    portal.answers = [400]
    sink(portal.url).round_completed(a_round())
    assert len(portal.received) == 1
    assert "HTTP 400" in capsys.readouterr().err


def test_an_unreachable_portal_is_logged_not_raised(capsys):
    sink(f"http://127.0.0.1:{free_port()}/api/runs/1/events/").run_finished(status="completed")
    assert "could not report 'run-finished'" in capsys.readouterr().err


def run_config(make_consortium, tmp_path, **extra: str) -> dict:
    consortium = make_consortium(rounds=1)
    from hospitals.protocol import canonical_json

    path = write_run_config(
        StudyRequest(
            protocol_json=canonical_json(consortium.protocol.document),
            aggregator_context=consortium.key.aggregator_context().to_bytes(),
            results_path=tmp_path / "results.jsonl",
            **extra,
        ),
        tmp_path / "run-config.toml",
    )
    import tomllib

    return tomllib.loads(path.read_text())


def test_the_run_config_picks_the_sink(make_consortium, tmp_path):
    plain = run_config(make_consortium, tmp_path)
    assert "results-url" not in plain
    assert isinstance(results_sink(AggregatorConfig.from_run_config(plain)), JsonlResultsSink)

    portal = run_config(
        make_consortium, tmp_path, results_url="http://p/api/runs/1/events/", results_token="t"
    )
    assert isinstance(results_sink(AggregatorConfig.from_run_config(portal)), HttpResultsSink)
    with pytest.raises(ConfigError, match="go together"):
        AggregatorConfig.from_run_config({**portal, "results-token": ""})
    with pytest.raises(ConfigError, match="http"):
        AggregatorConfig.from_run_config({**portal, "results-url": "file:///etc/passwd"})
