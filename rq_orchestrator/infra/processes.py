"""Whether a process of this host still runs (a zombie does not), and which host and pid namespace "this" is."""

from __future__ import annotations

import os


def running(pid: int) -> bool:
    """True while ``pid`` runs (or cannot be read: assume it does); False once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:  # gone, or hidden by /proc's hidepid: the kernel tells
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    except OSError:
        return True


def pid_namespace() -> str | None:
    """This boot of this machine and this process's pid namespace: where a pid names the same process.

    A host name does not say it: containers on the host network share it,
    and two machines' short names may match.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None
