"""Before `sdserve up` starts anything: are the ports its processes will listen on free?"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from central.supervisor.specs import ChildSpec


def _port_taken(host: str, port: int) -> bool:
    """Whether binding host:port fails the way uvicorn's bind would."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(specs: Sequence[ChildSpec]) -> list[str]:
    """Problems with the ports the processes will listen on (empty: all free)."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    for spec in specs:
        argv = list(spec.argv)
        host_flag = "--host" if "--host" in argv else "--bind"  # uvicorn's, redis-server's
        host, port = argv[argv.index(host_flag) + 1], int(argv[argv.index("--port") + 1])
        if port in seen:
            problems.append(f"{spec.name} and {seen[port]} would both use port {port}")
            continue
        seen[port] = spec.name
        if _port_taken(host, port):
            problems.append(f"port {port} on {host} (for {spec.name}) is already in use")
    return problems
