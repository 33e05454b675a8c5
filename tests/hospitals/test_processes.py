"""Whether a process exists: the launcher's check on its SuperNode, the deployment's on its
launchers."""

from __future__ import annotations

import os
import subprocess
import sys

from hospitals.processes import process_exists


def test_a_running_process_exists_and_a_reaped_one_does_not():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid is free

    assert process_exists(os.getpid())
    assert not process_exists(child.pid)
