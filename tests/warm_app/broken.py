"""A module that will not import outside a job (as a Frappe module that reads the site at import)."""

raise RuntimeError("needs a site")
