"""Aftercare's benchmark harness: ``python -m bench [--quick] [--scenarios a,b] [--json PATH]``.

Each scenario measures the product side by side with the baseline a user would pick instead,
in the same run, on a scratch PostgreSQL database and a private Redis database that the harness
creates and removes itself. See docs/benchmarks.md.
"""
