"""A module that ends the process on import (a settings module calling sys.exit), for the --config/--preload error tests."""

import sys

sys.exit(3)
