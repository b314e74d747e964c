"""Benchmarks and load tools: `moe bench`, `moe loadtest` and the GPU MoE-layer microbenchmark."""
