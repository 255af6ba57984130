"""Benchmarks that print figures (no timing assertions live in tests). Run each from the
repository root as a module, e.g. `python -m benchmarks.bench_end_to_end`."""
