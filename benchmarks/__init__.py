"""Benchmarks: dataset loaders, ir-measures evaluation, the benchmark runner and speed benchmarks."""
