"""Cohort's benchmarks: `make bench` (full) and `make bench-quick` (seconds, run in CI).

Every figure is a ratio or comparison of two things measured side by side in the same run
(medians of repeats, with min and max), so figures from different machines stay comparable.
Plaintext baselines live here only; the product has no plaintext path.
"""
