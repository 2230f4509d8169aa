"""A module that takes 3 s to import (tests/test_learning.py): too slow to learn."""

import time

time.sleep(3)
