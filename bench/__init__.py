"""Benchmarks and profiling (`make bench`, JSON output): the pretraining step, the input pipeline and
the kNN search. Measures the stages; nothing in the stages imports it."""
