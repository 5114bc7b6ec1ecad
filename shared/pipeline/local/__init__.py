"""The three stages as in-process ("local") objects. No HTTP here.

The stage services are thin HTTP wrappers around these objects, and the chain uses the
very same objects when a stage is configured local, so every topology runs this code.
Each stage validates its own inputs (raising the shared error types), so a request is
refused identically whether it came over HTTP or from the chain in-process.
"""
