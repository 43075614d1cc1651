"""graphnet benchmarks: run them with ``python benchmarks/run.py`` (see BENCHMARKS.md)."""
