"""Plumbing every room uses: configuration, Redis connections, a private redis-server, memory readings, sizes, the bad-input error."""
