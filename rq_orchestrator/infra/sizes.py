"""Memory sizes on the command line: 512MB, 2GB, 1.5GiB, 300M, or plain bytes."""

from __future__ import annotations

import re

UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40,
}
PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes in ``text``; ValueError when it does not parse or is not positive."""
    match = PATTERN.match(text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 512MB, 2GB, 1.5GiB)")
    size = int(float(match.group(1)) * UNITS[unit])
    if size <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return size


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"
