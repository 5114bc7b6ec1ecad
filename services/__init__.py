"""The three model stage services: thin HTTP wrappers around shared.pipeline.local,
with routes built from each stage's contract (services.routes)."""

VERSION = "0.1.0"
