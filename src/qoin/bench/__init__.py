"""Benchmarks behind ``qoin bench``: each prints one JSON document."""
