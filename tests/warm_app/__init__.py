"""A stand-in Frappe app for the warm-up tests: only its hooks."""
