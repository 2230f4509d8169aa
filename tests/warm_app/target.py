"""A module only a job imports (the warm-up tests check who imported it first)."""


def value() -> int:
    return 42
