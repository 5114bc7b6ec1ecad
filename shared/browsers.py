"""What a web browser may make a part do: Host allow-list, Origin check and CORS.

A gateway open on the user's machine is reachable by any web page the user visits, two
ways. A cross-site request: a page POSTs a multipart form to /v1/images/edits (a CORS
"simple" request, sent without a preflight) and the GPU works even though the page never
reads the answer. DNS rebinding: a page at http://evil.example:8000, whose name then
resolves to 127.0.0.1, is same-origin with the gateway as far as the browser knows.

- `HostGuard` answers 400 (our error body, type `invalid_host`) to a Host not allowed,
  with Starlette's `TrustedHostMiddleware` doing the matching (any port). Bound to a
  loopback address the default is loopback names only, which stops rebinding; given
  `SDSERVE_ALLOWED_HOSTS`, those names plus the loopback ones (`kubectl port-forward`
  and sidecars say localhost).
  Bound to any other address with no list, any Host is let through and the gateway says
  so in a warning at start: in Kubernetes and Compose clients arrive by Service name, pod
  IP or ingress host, which the part cannot guess, and refusing them would break every
  deployment that did not set the list. /healthz, /readyz and /metrics answer any Host:
  the kubelet probes with Host = the pod IP, Prometheus scrapes pod addresses, and they
  run nothing and read nothing secret.
- `OriginGuard` refuses with 403 (`forbidden`), before any other check or work, a
  request whose `Origin` header is neither the gateway's own (its host:port equal to the
  request's Host: the web page's own POSTs) nor listed in `SDSERVE_CORS_ORIGINS`.
  Browsers send Origin on every POST, cross-site or not, and on cross-site fetches;
  clients that are not browsers send none and are not affected.
- `CORSMiddleware` answers preflights and adds the CORS headers for the listed origins
  (none by default). No credentials: the API uses `Authorization`, never cookies.

Stage services are reached by central only, by Service name, pod IP or replica address,
so their Host stays open unless they are bound to loopback (where central calls them by
a loopback address too), and they refuse every request that carries an Origin: no
browser has anything to do there. `SDSERVE_ALLOWED_HOSTS` and `SDSERVE_CORS_ORIGINS` are
the gateway's (compose passes the same variables to every part).
"""

from __future__ import annotations

import ipaddress
import logging

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.config import Settings
from shared.errors import Forbidden, HostNotAllowed
from shared.guards import send_error

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# Answer whatever the Host: Kubernetes probes and Prometheus use the pod's address.
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
# What the gateway's CORS answers allow (the web API's methods and request headers) and
# show to another site's script (its response headers).
CORS_METHODS = ("GET", "POST", "DELETE")
CORS_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID")
CORS_EXPOSE = (
    "X-Request-ID",
    "X-Seed",
    "X-Seeds",
    "X-Truncated",
    "Retry-After",
    "Location",
)


def is_loopback(host: str) -> bool:
    """Whether a bind address (or Host name) is this machine only."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(settings: Settings, *, public_api: bool) -> list[str]:
    """The Host names a part answers (any port); ["*"] for any."""
    if public_api and settings.allowed_hosts:
        if "*" in settings.allowed_hosts:
            return ["*"]
        return [*LOOPBACK_HOSTS, *(h for h in settings.allowed_hosts if h not in LOOPBACK_HOSTS)]
    if is_loopback(settings.host):
        return list(LOOPBACK_HOSTS)
    return ["*"]


class HostGuard:
    """Starlette's `TrustedHostMiddleware`, answering our error body, probes exempt."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed = list(allowed_hosts)
        self.trusted = TrustedHostMiddleware(
            self._admit, allowed_hosts=self.allowed, www_redirect=False
        )

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["sdserve.host_allowed"] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.trusted.allow_any or scope.get("path") in PROBE_PATHS:
            await self.app(scope, receive, send)
            return

        async def guarded_send(message: Message) -> None:
            # Only the middleware's own refusal (plain text) arrives here unadmitted.
            if scope.get("sdserve.host_allowed"):
                await send(message)

        await self.trusted(scope, receive, guarded_send)
        if not scope.get("sdserve.host_allowed"):
            host = Headers(scope=scope).get("host", "")[:100]
            message = f"Host {host!r} is not served here; allowed: {', '.join(self.allowed)}"
            error = HostNotAllowed(f"{message} (SDSERVE_ALLOWED_HOSTS)", param="Host")
            await send_error(send, error, scope)


def _host_port(netloc: str, scheme: str) -> tuple[str, str]:
    """("host", "port") of "host[:port]" or "[v6][:port]", the scheme's port by default."""
    netloc = netloc.lower()
    if netloc.startswith("["):
        host, _, rest = netloc.partition("]")
        host, port = host + "]", rest.removeprefix(":")
    else:
        host, _, port = netloc.partition(":")
    return host, port or _DEFAULT_PORTS.get(scheme, "")


def same_origin(origin: str, host: str | None) -> bool:
    """Whether `origin` (scheme://host[:port]) names the host:port the request was sent to.

    The scheme is not compared: behind a TLS proxy the page is https and the gateway
    hears http, on the same Host.
    """
    scheme, sep, netloc = origin.lower().partition("://")
    if not sep or not netloc or not host:
        return False
    return _host_port(netloc, scheme) == _host_port(host, scheme)


class OriginGuard:
    """403 to a request from another site's page, before anything else looks at it."""

    def __init__(self, app: ASGIApp, cors_origins: list[str], *, browsers: bool) -> None:
        self.app = app
        self.origins = {o.lower() for o in cors_origins}
        self.any_origin = "*" in self.origins
        # Stage services: no browser may call them, not even their own pages.
        self.browsers = browsers

    def allowed(self, origin: str, host: str | None) -> bool:
        if not self.browsers:
            return False
        return self.any_origin or origin.lower() in self.origins or same_origin(origin, host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None or self.allowed(origin, headers.get("host")):
            await self.app(scope, receive, send)
            return
        if self.browsers:
            message = (
                f"requests from {origin[:100]!r} are refused: not this gateway's page nor "
                "an origin in SDSERVE_CORS_ORIGINS"
            )
        else:
            message = "stage services answer the gateway only, not browsers"
        await send_error(send, Forbidden(message, param="Origin"), scope)


def install_browser_guards(app: FastAPI, settings: Settings, *, public_api: bool) -> None:
    """Add CORS (gateway, when origins are listed), the Origin check and the Host check.

    Added after the API-key guard, so they run before it (a preflight carries no key) and
    after the metrics, which count what they refuse.
    """
    if public_api and settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSE,
        )
    app.add_middleware(
        OriginGuard,
        cors_origins=settings.cors_origins if public_api else [],
        browsers=public_api,
    )
    hosts = allowed_hosts(settings, public_api=public_api)
    app.add_middleware(HostGuard, allowed_hosts=hosts)
    if hosts != ["*"]:
        log.info("answering Host %s (any port)", ", ".join(hosts))
    elif public_api and not settings.allowed_hosts:
        log.warning(
            "SDSERVE_ALLOWED_HOSTS is empty and the gateway listens on %s: any Host is "
            "answered, so a web page can reach it through DNS rebinding; set "
            "SDSERVE_ALLOWED_HOSTS to the names clients use",
            settings.host,
        )
