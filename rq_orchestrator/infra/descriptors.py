"""This process's open file descriptors, sockets and files, as Linux's /proc lists them (none known elsewhere)."""

from __future__ import annotations

import fcntl
import os
import stat


def open_descriptors() -> set[int]:
    """This process's open file descriptors."""
    try:
        listed = {int(fd) for fd in os.listdir("/proc/self/fd")}
    except OSError:
        return set()
    return {fd for fd in listed if _is_open(fd)}  # not the one listdir used for the listing


def open_connections() -> set[tuple[int, str]]:
    """This process's open sockets and regular files (a database's, say), each as (descriptor, what /proc names:
    ``socket:[inode]`` or the file's path); not a file open for appending only (a log, meant to be shared)."""
    found = set()
    for fd in open_descriptors():
        try:
            kind = os.fstat(fd).st_mode
            appending = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if stat.S_ISSOCK(kind) or (stat.S_ISREG(kind) and not appending):
            found.add((fd, target))
    return found


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
