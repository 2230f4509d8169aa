"""The one error every front end shows the same way: bad input, one line on stderr, exit status 2."""

from __future__ import annotations

import importlib
from types import ModuleType

import click


class BadInput(click.ClickException):
    """Bad command-line input: one line on stderr, exit status 2."""

    exit_code = 2


def import_given(module: str, option: str, shown: str | None = None) -> ModuleType:
    """Import a module the user named; any failure, a ``sys.exit()`` in it too, is their input's (``shown``: as given)."""
    try:
        return importlib.import_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever the module raises is the user's input
        raise BadInput(f"{option}: cannot import {shown or module}: {type(exc).__name__}: {exc}") from None
