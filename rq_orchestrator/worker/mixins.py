"""One subclass per (mixin, class): how the pool puts its behaviour in front of rq's, Frappe's or a user's classes."""

from __future__ import annotations

_made: dict[tuple[type, type], type] = {}


def with_mixin(mixin: type, base: type) -> type:
    """The subclass of ``base`` with ``mixin`` first, under ``base``'s name (made once, cached: built in the master)."""
    if (mixin, base) not in _made:
        _made[mixin, base] = type(base.__name__, (mixin, base), {})
    return _made[mixin, base]
