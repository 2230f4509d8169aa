"""The one error every front end shows the same way: bad input, one line on stderr, exit status 2."""

from __future__ import annotations

import click


class BadInput(click.ClickException):
    """Bad command-line input: one line on stderr, exit status 2."""

    exit_code = 2
