"""Benchmarks of sdserve: per-stage compute (`benchmarks.stages`) and the served system end
to end (`benchmarks.serving`); see benchmarks/README.md."""
