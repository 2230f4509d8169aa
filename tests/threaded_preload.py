"""A preload that leaves a thread running in the master: the pool must refuse to fork."""

import threading

_stop = threading.Event()
threading.Thread(target=_stop.wait, name="left-running", daemon=True).start()
