"""The demo's job, kept in a module of its own so the pool can preload it cheaply."""

from __future__ import annotations

import time


def work(seconds: float) -> None:
    """Stand in for real work by sleeping, as the seed's test job did."""
    time.sleep(seconds)
