"""Speed and quality measurements, each against the obvious alternative in the same run.

Run from the repository root as modules, e.g. ``python -m benchmarks.bench_extract``.
"""
