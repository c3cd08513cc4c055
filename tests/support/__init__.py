"""Helpers shared by the tests, the benchmarks and the HA demo: processes and whole stacks."""
