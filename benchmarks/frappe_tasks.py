"""Jobs the Frappe job benchmarks enqueue (imported by the bench's work processes, not by the runner)."""

from __future__ import annotations

import time

DOCTYPES = ("DocType", "User", "ToDo", "Note", "File", "Contact", "Address", "Communication")
DOCFIELD_ROWS = 3000


def busy(seconds: float = 20.0) -> int:
    """What a typical job reads before its work: metadata of 8 doctypes, a document, 3,000 DocField rows; then sleep."""
    import frappe

    for doctype in DOCTYPES:
        frappe.get_meta(doctype)
    frappe.get_doc("User", "Administrator")
    rows = frappe.get_all("DocField", fields=["*"], limit=DOCFIELD_ROWS)
    time.sleep(seconds)
    return len(rows)
