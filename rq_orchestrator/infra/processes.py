"""Whether a process of this host still runs, read from /proc (a zombie does not)."""

from __future__ import annotations


def running(pid: int) -> bool:
    """True while ``pid`` runs (or cannot be read: assume it does); False once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        return True
