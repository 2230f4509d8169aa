"""The hooks of the stand-in app: functions Frappe would call around every job."""

before_job = ["tests.warm_app.job_hooks.before"]
after_job = ["tests.warm_app.job_hooks.after"]
