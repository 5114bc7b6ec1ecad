"""Batch buckets and the per-component strategy against the settings before them (issue
24, item 5): tiny 64x64 one-client latency and 8-client throughput, and the graphs built
after ready under that load. `python -m benchmarks.buckets` writes
benchmarks/results/buckets.md and .json."""
