"""Fake upstream services for tests and benchmarks."""
