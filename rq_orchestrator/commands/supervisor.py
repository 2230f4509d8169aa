"""The supervisor program block that runs a pool in place of `bench worker` programs."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

# Time for the pool to notice the stop and for idle workers to leave (1 s polls).
STOP_MARGIN = 60


def program_block(
    name: str,
    command: Sequence[str],
    directory: str | None,
    stdout_logfile: str,
    stderr_logfile: str,
    longest_stop: int,
    user: str | None = None,
    startretries: str | None = None,
) -> str:
    """A `[program:...]` block whose stopwaitsecs lets the longest job finish on a warm stop."""
    lines = [
        f"[program:{name}]",
        f"command={shlex.join(command).replace('%', '%%')}",  # supervisor expands %(name)s in commands
        "priority=4",
        "autostart=true",
        "autorestart=true",
        f"stdout_logfile={stdout_logfile}",
        f"stderr_logfile={stderr_logfile}",
        *([f"user={user}"] if user else []),
        "stopsignal=TERM",
        f"stopwaitsecs={longest_stop + STOP_MARGIN}",
        *([f"directory={directory}"] if directory else []),
        "killasgroup=true",
        "stopasgroup=false",
        "numprocs=1",
        "process_name=%(program_name)s",
        *([f"startretries={startretries}"] if startretries else []),
    ]
    return "\n".join(lines) + "\n"
