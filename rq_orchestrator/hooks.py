"""The Frappe app's hooks: what bench and Frappe read about this app."""

app_name = "rq_orchestrator"
app_title = "RQ Orchestrator"
app_publisher = "rq_orchestrator developers"
app_description = "Autoscaling, pre-forking RQ worker pool: `bench worker-pool` that sizes itself"
app_email = "dev@rq-orchestrator.local"
app_license = "mit"
