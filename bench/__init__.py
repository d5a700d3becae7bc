"""Benchmark of xend-ext against a reference server built the way xend was.

Run ``python -m bench --help``; bench/README.md explains the phases, the
reference server and the targets.  The bench measures and reports; it never
asserts, so a slow run is a finding, not a failure.
"""
