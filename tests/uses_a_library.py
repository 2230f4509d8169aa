"""A job module that brings in a library the master did not have (tests/test_learning.py: SIGHUP keeps the library)."""

import colorsys


def hue(red: float, green: float, blue: float) -> float:
    return colorsys.rgb_to_hsv(red, green, blue)[0]
