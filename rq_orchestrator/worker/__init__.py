"""What runs inside a forked worker, and its one-way channel to the master."""
