"""rq_orchestrator: an autoscaling, pre-forking RQ worker pool (and a Frappe app)."""

__version__ = "0.1.0"
