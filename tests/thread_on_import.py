"""A module that starts a thread when imported (tests/test_learning.py): the master must stop learning."""

import threading
import time

threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
