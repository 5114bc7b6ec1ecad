"""Settings of the session-wide tiny stack (`tests/conftest.py::tiny_stack`), for tests
that start a variant of it (say, with API keys) next to the shared one."""

# The embedded tiny weights at two sizes; steps up to 1000 so a test can keep a job
# running long enough to cancel it; no warm-up (each shape traces on first use).
TINY_STACK_ENV = {
    "SDSERVE_MODEL": "tiny",
    "SDSERVE_SIZES": "64x64,128x128",
    "SDSERVE_MAX_STEPS": "1000",
    "SDSERVE_WARM_UP": "false",
}
STAGE_NAMES = ("text_encoder", "diffusion", "decoder")
