"""This process's open file descriptors and sockets, as Linux's /proc lists them (none known elsewhere)."""

from __future__ import annotations

import os


def open_descriptors() -> set[int]:
    """This process's open file descriptors."""
    try:
        listed = {int(fd) for fd in os.listdir("/proc/self/fd")}
    except OSError:
        return set()
    return {fd for fd in listed if _is_open(fd)}  # not the one listdir used for the listing


def open_sockets() -> set[str]:
    """This process's open sockets, as /proc names them (``socket:[inode]``)."""
    found = set()
    for fd in open_descriptors():
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
