"""The app's module folder (RQ Orchestrator): the RQ Worker Pool doctype."""
