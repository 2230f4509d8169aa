"""The app's module folder (RQ Orchestrator): no doctypes; the app adds bench commands."""
