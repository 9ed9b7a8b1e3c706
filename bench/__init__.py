"""Benchmarks: traffic, baselines, harness."""
