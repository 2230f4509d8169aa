"""`python -m rq_orchestrator`: the `rq-orchestrator` command."""

from .cli import main

main()
