"""How figures read in log lines and tables: a count with its noun ("1 job", "3 jobs"), a comparison that shows why."""

from __future__ import annotations


def counted(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural unless one: "1 worker", "0 workers" (every noun used here takes an s)."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def compared(value: float, bound: float, decimals: int = 2) -> tuple[str, str]:
    """``value`` and ``bound`` with ``decimals``, or more where those would print the two equal (0.5004 > 0.5000);
    in full past six more."""
    for places in range(decimals, decimals + 7):
        shown = f"{value:.{places}f}", f"{bound:.{places}f}"
        if shown[0] != shown[1]:
            return shown
    return repr(float(value)), repr(float(bound))
