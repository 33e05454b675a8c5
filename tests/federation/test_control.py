import json
from pathlib import Path

import pytest

from federation import control
from federation.control import ControlError, FlowerControl


def fake_flwr(tmp_path: Path, answers: list[str]) -> Path:
    """A `flwr` that prints its answers in turn, one per call, and logs each call's arguments."""
    for index, answer in enumerate(answers):
        (tmp_path / f"answer-{index}").write_text(answer)
    script = tmp_path / "flwr"
    script.write_text(
        "#!/bin/sh\n"
        f'cd "{tmp_path}"\n'
        'echo "$*" >> calls\n'
        "n=$(wc -l < calls)\n"
        'cat "answer-$((n - 1))"\n'
    )
    script.chmod(0o755)
    return script


def finished_run(run_id: int) -> str:
    run = {"run-id": run_id, "status": "finished:completed", "status-details": "N/A"}
    return json.dumps({"success": True, "runs": [run]})


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(control, "READ_RETRY_DELAY_S", 0.0)


def test_status_survives_a_transient_internal_server_error(tmp_path):
    refused = json.dumps({"success": False, "error-message": "Internal server error"})
    flwr = fake_flwr(tmp_path, [refused, "not json", finished_run(7)])

    status = FlowerControl(env={}, connection="local", flwr=flwr).status(7)

    assert status.succeeded and status.details == ""
    assert calls(tmp_path) == ["ls local --run-id 7 --format json"] * 3


def test_status_gives_up_after_the_last_attempt(tmp_path):
    refused = json.dumps({"success": False, "error-message": "Internal server error"})
    flwr = fake_flwr(tmp_path, [refused] * control.READ_ATTEMPTS)

    with pytest.raises(ControlError, match="Internal server error"):
        FlowerControl(env={}, connection="local", flwr=flwr).status(7)
    assert len(calls(tmp_path)) == control.READ_ATTEMPTS


def test_a_refused_submission_is_never_repeated(tmp_path):
    refused = json.dumps({"success": False, "error-message": "Internal server error"})
    flwr = fake_flwr(tmp_path, [refused, json.dumps({"success": True, "run-id": 3})])

    with pytest.raises(ControlError):
        FlowerControl(env={}, connection="local", flwr=flwr).submit(tmp_path / "run.toml")
    assert len(calls(tmp_path)) == 1


def test_a_cli_that_does_not_answer_counts_as_no_node_online(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "CLI_TIMEOUT_S", 0.2)
    script = tmp_path / "flwr"
    script.write_text("#!/bin/sh\nexec sleep 5\n")
    script.chmod(0o755)
    flowers = FlowerControl(env={}, connection="local", flwr=script)

    assert flowers.online_nodes() == 0
    with pytest.raises(ControlError, match="did not answer within 0.2 s"):
        flowers.status(7)
