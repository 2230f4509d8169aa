"""Jobs and modules for the Frappe warm-up tests: a job shaped like Frappe's ``execute_job``."""

import importlib
import sys


def run_method(method: str) -> bool:
    """Run ``method`` as Frappe's execute_job does; True if its module was already imported when the job began."""
    module_name, _, attribute = method.rpartition(".")
    was_imported = module_name in sys.modules
    getattr(importlib.import_module(module_name), attribute)()
    return was_imported
