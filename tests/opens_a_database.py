"""A preload that leaves a database file open (sqlite, as Django's ORM after a query at import) and log files."""

import logging
import logging.handlers
import os
import sqlite3
import tempfile

DIRECTORY = tempfile.mkdtemp(prefix="opens-a-database-")
DATABASE = sqlite3.connect(os.path.join(DIRECTORY, "app.sqlite3"))
DATABASE.execute("CREATE TABLE IF NOT EXISTS hits (n INTEGER)")
logging.getLogger("opens_a_database").addHandler(logging.FileHandler(os.path.join(DIRECTORY, "app.log")))
logging.getLogger("opens_a_database.overwritten").addHandler(
    logging.FileHandler(os.path.join(DIRECTORY, "overwritten.log"), mode="w"))
APPENDED = open(os.path.join(DIRECTORY, "appended.log"), "a")  # a log of its own, written to directly
logging.getLogger("opens_a_database.syslog").addHandler(logging.handlers.SysLogHandler(address=("127.0.0.1", 514)))
