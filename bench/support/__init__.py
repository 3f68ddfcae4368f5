"""What the benchmarks in bench/ share: runners, a profiler wrapper, the telemetry sink, the failover runs.

These modules are not benchmarks themselves and print no figures of their own.
"""
