"""Benchmarks (`make bench`): each suite returns rows that go into BENCHMARKS.md."""
