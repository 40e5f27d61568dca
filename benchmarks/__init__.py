"""Benchmark suite: the same Celery workloads against several broker/backend pairs (see README.md)."""
