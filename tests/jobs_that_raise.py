"""A module whose import fails, for the --preload error test."""

raise RuntimeError("this module fails on import")
