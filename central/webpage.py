"""The gateway's web page: `GET /` and its static files under `/web/` (central/web/).

Plain HTML, CSS and JavaScript, no build step and nothing fetched from elsewhere: the
page talks to /v1/info, /v1/jobs and the job's event stream of the same gateway.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent / "web"
# Everything the page uses comes from here; images are data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def register_web_page(app: FastAPI) -> None:
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")

    @app.get("/", include_in_schema=False)
    async def web_page() -> FileResponse:
        return FileResponse(
            WEB_DIR / "index.html",
            media_type="text/html",
            headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY},
        )
