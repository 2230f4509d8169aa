"""The files a command writes (a chart, a JSON record), checked before it does any work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..infra.errors import BadInput

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def check_output(option: str, path: str | None) -> None:
    """Fail before the run, not after it, when an output file cannot be written."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise BadInput(f"{option}: no such directory: {Path(path).parent}")


def check_plot_path(path: str, asked: bool = True) -> None:
    """``asked``: the user named the file, so a missing matplotlib is refused now, not found after the run."""
    check_output("--plot", path)
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise BadInput(f"--plot: {path} must end in {', '.join(PLOT_SUFFIXES)}")
    if asked and importlib.util.find_spec("matplotlib") is None:
        raise BadInput("--plot needs matplotlib: pip install 'rq_orchestrator[demo]'")
