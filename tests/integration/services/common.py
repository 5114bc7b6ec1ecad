"""Settings the tiny stage services are started with in these tests."""

TINY_ENV = {
    "SDSERVE_MODEL": "tiny",
    "SDSERVE_SIZES": "64x64,128x128",
    # Start sooner; each shape traces on its first request instead (what the tests use).
    "SDSERVE_WARM_UP": "false",
}
TOKEN = "secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SMALL_BODY_BYTES = 200_000
