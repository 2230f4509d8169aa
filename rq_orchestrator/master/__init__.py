"""The master process: forks, reaps and resizes workers, and what it runs beside them (scheduler, maintenance, state, metrics, cluster leases)."""
