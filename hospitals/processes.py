"""Whether a process exists, for the launcher (its SuperNode) and the local deployment (a launcher).

Its own module, free of Flower and torch: the portal's worker imports it with the deployment.
"""

from __future__ import annotations

import os


def process_exists(pid: int) -> bool:
    """Whether a process with `pid` exists (a zombie not yet reaped counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True
