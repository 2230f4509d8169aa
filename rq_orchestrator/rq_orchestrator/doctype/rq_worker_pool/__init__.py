"""RQ Worker Pool: every worker pool on the bench's Redis, in the desk (virtual, read-only)."""
