"""Benchmarking helpers: timing and memory (``speed``) and measuring a variant in a process of its own (``child``)."""
