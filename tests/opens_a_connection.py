"""A job module that connects at import, as one that runs a database query at import does (tests/test_learning.py)."""

import socket

_listener = socket.socket()
_listener.bind(("127.0.0.1", 0))
_listener.listen()
CONNECTION = socket.create_connection(_listener.getsockname())


def noop() -> None:
    pass
