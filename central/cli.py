"""The `sdserve` command line.

* ``sdserve up`` starts the stage services and the central gateway as processes on this
  machine (the same processes ``docker compose up`` runs), under
  :mod:`central.supervisor`, and prints how to call the gateway once it is ready.
* ``sdserve generate PROMPT`` submits a job to a running gateway (``POST /v1/jobs``),
  shows a progress bar fed by the job's event stream, and saves the images as PNG
  files; Ctrl-C cancels the job on the gateway.

This module imports nothing heavy at import time (no TensorFlow, Keras, pydantic or
httpx): ``sdserve --help`` answers at once, and each subcommand imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from central.supervisor.specs import ChildSpec

TOPOLOGIES = ("three-endpoints", "all-in-one", "hybrid")
MODELS = ("tiny", "sd-v1", "sd-v2")
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PORT = 8000
DEFAULT_BASE_PORT = 8001
# Stage services always listen on loopback: only central talks to them, on this machine.
STAGE_HOST = "127.0.0.1"

_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


@dataclass(frozen=True)
class Stage:
    name: str  # process name in the logs
    module: str  # python -m MODULE --host H --port P
    port_offset: int  # from --base-port
    url_env: str  # the variable that tells central where it is


STAGES = (
    Stage("text-encoder", "services.text_encoder", 0, "SDSERVE_TEXT_ENCODER_URL"),
    Stage("diffusion", "services.diffusion", 1, "SDSERVE_DIFFUSION_URL"),
    Stage("decoder", "services.decoder", 2, "SDSERVE_DECODER_URL"),
)
# Which stages run as their own service (remote to central) in each topology.
REMOTE_STAGES: dict[str, frozenset[str]] = {
    "three-endpoints": frozenset({"text-encoder", "diffusion", "decoder"}),
    "all-in-one": frozenset(),
    "hybrid": frozenset({"diffusion"}),
}


@dataclass(frozen=True)
class UpConfig:
    """What `sdserve up` runs, after flags, environment and defaults are merged."""

    topology: str = "three-endpoints"
    model: str = "tiny"
    weights: str = "embedded"
    sizes: str | None = None  # "64x64,128x128"; None: the family's default sizes
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    base_port: int = DEFAULT_BASE_PORT


# --------------------------------------------------------------------------- helpers


def _size(text: str) -> str:
    match = _SIZE_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512x512")
    return f"{int(match.group(1))}x{int(match.group(2))}"


def _sizes(text: str) -> str:
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one size, like 64x64,128x128")
    return ",".join(_size(p) for p in parts)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def connect_host(host: str) -> str:
    """The address to reach a server listening on ``host`` (wildcards → loopback)."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - comparing, not binding
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def http_url(host: str, port: int) -> str:
    host = connect_host(host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"http://{host}:{port}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sdserve")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdserve",
        description="Stable Diffusion as three model services and a central gateway.",
        epilog="Run `sdserve COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"sdserve {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = commands.add_parser(
        "up",
        help="start the services and the gateway on this machine",
        description=(
            "Start the stage services and the central gateway as processes on this machine "
            "and keep them running (restarting any that dies) until Ctrl-C. Settings go to "
            "every process as SDSERVE_* environment variables; a flag overrides the "
            "variable, and other SDSERVE_* variables (SDSERVE_XLA, SDSERVE_MAX_BATCH, ...) "
            "pass through unchanged. Stage services listen on 127.0.0.1 only; --host is "
            "where the gateway listens."
        ),
    )
    up.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="three-endpoints",
        help="three-endpoints: text encoder, diffusion and decoder each in its own service; "
        "all-in-one: the gateway alone, every stage in it; hybrid: only diffusion in its "
        "own service (default: three-endpoints)",
    )
    up.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help="model family (default: SDSERVE_MODEL or tiny)",
    )
    up.add_argument(
        "--weights",
        default=None,
        metavar="embedded|pretrained|random|DIR",
        help="embedded (tiny's, shipped in the package), pretrained (keras-cv's files, "
        "downloaded once and checked), random (seeded; images are noise) or a directory "
        "(default: SDSERVE_WEIGHTS, else embedded for tiny and pretrained for sd-v1/sd-v2)",
    )
    up.add_argument(
        "--sizes",
        type=_sizes,
        default=None,
        metavar="WxH,...",
        help="sizes to serve, e.g. 64x64,128x128 (default: SDSERVE_SIZES or the family's)",
    )
    up.add_argument(
        "--host", default="127.0.0.1", help="where the gateway listens (default: 127.0.0.1)"
    )
    up.add_argument("--port", type=_port, default=DEFAULT_PORT, help="gateway port (default: 8000)")
    up.add_argument(
        "--base-port",
        type=_port,
        default=DEFAULT_BASE_PORT,
        help="text encoder port; diffusion uses base+1, decoder base+2 (default: 8001)",
    )
    up.add_argument(
        "--ready-timeout",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="stop everything if the parts are not all ready by then; 0: wait forever "
        "(default: 600)",
    )
    up.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="on stop, how long each process gets after SIGTERM before SIGKILL (default: 10)",
    )
    up.add_argument("--no-color", action="store_true", help="no colours in the log prefixes")

    gen = commands.add_parser(
        "generate",
        help="generate images with a running gateway and save them",
        description=(
            "Submit a job to a running gateway (POST /v1/jobs), show its progress, and save "
            "the images as PNG files. With -n 1 the image goes to --output; with -n N > 1 "
            "to OUT-0.png ... OUT-(N-1).png. Each path is printed with its seed. Ctrl-C "
            "cancels the job on the gateway."
        ),
    )
    gen.add_argument("prompt", metavar="PROMPT", help="what to draw")
    gen.add_argument(
        "-o", "--output", default="out.png", metavar="PATH", help="where to save (default: out.png)"
    )
    gen.add_argument(
        "--url",
        default=None,
        help=f"the gateway (default: SDSERVE_URL or {DEFAULT_URL})",
    )
    gen.add_argument(
        "--size", type=_size, default="64x64", metavar="WxH", help="image size (default: 64x64)"
    )
    gen.add_argument(
        "-n", type=_positive_int, default=1, metavar="N", help="number of images (default: 1)"
    )
    gen.add_argument(
        "--steps", type=_positive_int, default=None, help="sampler steps (server default)"
    )
    gen.add_argument(
        "--guidance",
        type=float,
        default=None,
        metavar="G",
        help="classifier-free guidance scale (server default)",
    )
    gen.add_argument(
        "--seed", type=int, default=None, metavar="S", help="seed (server picks one if unset)"
    )
    gen.add_argument(
        "--negative-prompt", default=None, metavar="TEXT", help="what to steer away from"
    )
    gen.add_argument(
        "--timeout",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for the images (default: 600)",
    )
    add_export_savedmodel_parser(commands)
    return parser


def add_export_savedmodel_parser(commands: Any) -> None:
    export = commands.add_parser(
        "export-savedmodel",
        help="export the three stages as TF Serving SavedModels",
        description=(
            "Write the text encoder, diffusion (the whole DDIM loop) and decoder as "
            "versioned TensorFlow SavedModels: OUT/<stage>/<version>/, with "
            "OUT/<stage>/export.json describing them. Point TF Serving's "
            "--model_base_path at OUT/<stage>. Settings not given as flags come from "
            "SDSERVE_* variables. See central/export.py for the signatures."
        ),
    )
    export.add_argument("--out", required=True, metavar="DIR", help="where to write")
    export.add_argument(
        "--model", choices=MODELS, default=None, help="model family (default: SDSERVE_MODEL)"
    )
    export.add_argument(
        "--weights",
        default=None,
        metavar="embedded|pretrained|random|DIR",
        help="weights to export (default: SDSERVE_WEIGHTS, else the family's default)",
    )
    export.add_argument(
        "--size",
        type=_size,
        default=None,
        metavar="WxH",
        help="the image size the SavedModels serve (default: the first of SDSERVE_SIZES "
        "or of the family's sizes)",
    )
    export.add_argument(
        "--version", type=_positive_int, default=1, help="model version to write (default: 1)"
    )
    export.add_argument(
        "--overwrite", action="store_true", help="replace that version if it exists"
    )


def cmd_export_savedmodel(args: argparse.Namespace) -> int:
    from shared.config import ConfigError, load_settings
    from shared.errors import SdserveError

    overrides = {
        key: value
        for key, value in (("model", args.model), ("weights", args.weights), ("sizes", args.size))
        if value is not None
    }
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(f"sdserve export-savedmodel: {exc}", file=sys.stderr)
        return 2
    if settings.weights == "random":
        print(
            "!!! WEIGHTS ARE RANDOM: the exported models are untrained and make noise. "
            "For real ones: --model sd-v1 --weights pretrained",
            file=sys.stderr,
        )
    from central.export import export_savedmodels

    try:
        paths = export_savedmodels(settings, Path(args.out), args.version, overwrite=args.overwrite)
    except (FileExistsError, ValueError, SdserveError) as exc:
        print(f"sdserve export-savedmodel: error: {exc}", file=sys.stderr)
        return 1
    for stage, path in paths.items():
        print(f"{stage}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sdserve` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "up":
        return cmd_up(args)
    if args.command == "generate":
        return cmd_generate(args)
    if args.command == "export-savedmodel":
        return cmd_export_savedmodel(args)
    parser.print_help(sys.stderr)
    return 2


# ------------------------------------------------------------------------------ up


def resolve_up_config(args: argparse.Namespace, env: Mapping[str, str]) -> UpConfig:
    """Merge flags (first), SDSERVE_* environment variables, then defaults."""
    from shared.config import DEFAULT_WEIGHTS

    model = args.model or env.get("SDSERVE_MODEL") or "tiny"
    weights = args.weights or env.get("SDSERVE_WEIGHTS") or DEFAULT_WEIGHTS.get(model, "")
    if weights not in ("embedded", "random", "pretrained", ""):
        weights = str(Path(weights).expanduser().resolve())
    sizes = args.sizes or env.get("SDSERVE_SIZES") or None
    return UpConfig(
        topology=args.topology,
        model=model,
        weights=weights,
        sizes=sizes,
        host=args.host,
        port=args.port,
        base_port=args.base_port,
    )


def build_processes(
    config: UpConfig, base_env: Mapping[str, str], python: str | None = None
) -> list[ChildSpec]:
    """The processes `sdserve up` starts for a topology, with their argv and environment.

    Every process gets ``base_env`` with SDSERVE_MODEL, SDSERVE_WEIGHTS and (when set)
    SDSERVE_SIZES from ``config``. The stage URL variables are removed everywhere and set
    only on central, for the stages that run remote in this topology, so a stray
    SDSERVE_DIFFUSION_URL cannot turn an all-in-one gateway into a client.
    """
    from central.supervisor.specs import ChildSpec

    python = python or sys.executable
    url_vars = [stage.url_env for stage in STAGES]
    common = {k: v for k, v in base_env.items() if k not in url_vars}
    common["SDSERVE_MODEL"] = config.model
    common["SDSERVE_WEIGHTS"] = config.weights
    # A terminal reads plain lines better than JSON; an explicit setting still wins.
    common.setdefault("SDSERVE_LOG_FORMAT", "text")
    # TensorFlow's C++ start-up notes (CPU features, oneDNN) are noise here.
    common.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if config.sizes:
        common["SDSERVE_SIZES"] = config.sizes
    else:
        common.pop("SDSERVE_SIZES", None)

    remote = REMOTE_STAGES[config.topology]
    specs: list[ChildSpec] = []
    central_env = dict(common)
    for stage in STAGES:
        if stage.name not in remote:
            continue
        port = config.base_port + stage.port_offset
        url = http_url(STAGE_HOST, port)
        specs.append(
            ChildSpec(
                name=stage.name,
                argv=[python, "-m", stage.module, "--host", STAGE_HOST, "--port", str(port)],
                env=dict(common),
                ready_url=f"{url}/readyz",
            )
        )
        central_env[stage.url_env] = url
    specs.append(
        ChildSpec(
            name="central",
            argv=[python, "-m", "central", "--host", config.host, "--port", str(config.port)],
            env=central_env,
            ready_url=f"{http_url(config.host, config.port)}/readyz",
        )
    )
    return specs


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
        host, port = argv[argv.index("--host") + 1], int(argv[argv.index("--port") + 1])
        if port in seen:
            problems.append(f"{spec.name} and {seen[port]} would both use port {port}")
            continue
        seen[port] = spec.name
        if _port_taken(host, port):
            problems.append(f"port {port} on {host} (for {spec.name}) is already in use")
    return problems


def _example_size(config: UpConfig) -> str:
    if config.sizes:
        return config.sizes.split(",")[0]
    from shared.config import DEFAULT_SIZES, format_size

    return format_size(DEFAULT_SIZES.get(config.model, [(512, 512)])[0])


def random_weights_warning() -> str:
    return (
        "!!! WEIGHTS ARE RANDOM (SDSERVE_WEIGHTS=random): the model is untrained and every "
        "image will be noise.\n"
        "!!! For real images: sdserve up --model sd-v1 --weights pretrained"
    )


def ready_banner(config: UpConfig) -> str:
    """What `sdserve up` prints once every part is ready."""
    base = http_url(config.host, config.port)
    size = _example_size(config)
    from shared.config import EXAMPLE_PROMPTS

    prompt = EXAMPLE_PROMPTS.get(config.model, EXAMPLE_PROMPTS["sd-v1"])
    body = json.dumps({"prompt": prompt, "size": size, "response_format": "b64_json"})
    decode = (
        "import sys, json, base64; d = json.load(sys.stdin); "
        'open("out.png", "wb").write(base64.b64decode(d["data"][0]["b64_json"]))'
    )
    listening = (
        f" (listening on all interfaces, {config.host})"
        if config.host in ("0.0.0.0", "::")  # noqa: S104 - comparing, not binding
        else ""
    )
    lines = [
        "",
        f"sdserve is ready: {config.topology}, model {config.model}, weights {config.weights}",
        f"  gateway: {base}{listening}",
        f"  docs:    {base}/docs",
        "  try it:",
        f"    curl -s {base}/v1/images/generations \\",
        "      -H 'Content-Type: application/json' \\",
        f"      -d {shlex.quote(body)} \\",
        f"      | python3 -c {shlex.quote(decode)}",
        f"  or:  sdserve generate {shlex.quote(prompt)} --size {size} -o out.png"
        + (f" --url {base}" if base != DEFAULT_URL else ""),
    ]
    if config.weights == "random":
        lines.append(random_weights_warning())
    lines += ["Press Ctrl-C to stop.", ""]
    return "\n".join(lines) + "\n"


def cmd_up(args: argparse.Namespace) -> int:
    import asyncio

    from central.supervisor.runner import Supervisor
    from shared.config import ConfigError, load_settings

    config = resolve_up_config(args, os.environ)
    overrides: dict[str, object] = {"model": config.model, "weights": config.weights}
    if config.sizes:
        overrides["sizes"] = config.sizes
    try:  # the same check every process makes at start-up, once, before starting any
        load_settings(**overrides)
    except ConfigError as exc:
        print(f"sdserve up: {exc}", file=sys.stderr)
        return 2

    specs = build_processes(config, os.environ)
    problems = check_ports(specs)
    if problems:
        for problem in problems:
            print(f"sdserve up: {problem}", file=sys.stderr)
        print("sdserve up: pick others with --port / --base-port", file=sys.stderr)
        return 2

    supervisor = Supervisor(specs, color=False if args.no_color else None, grace_s=args.grace)
    parts = ", ".join(
        f"{s.name} on {s.ready_url.rsplit('/', 1)[0] if s.ready_url else '?'}" for s in specs
    )
    supervisor.log(
        f"starting {config.topology}: {parts}; model {config.model}, weights {config.weights}"
        + (f", sizes {config.sizes}" if config.sizes else "")
    )
    if config.weights == "random":
        supervisor.log(random_weights_warning(), error=True)
    timeout = args.ready_timeout or None
    return asyncio.run(
        supervisor.run(
            ready_timeout_s=timeout, on_ready=lambda: supervisor.write(ready_banner(config))
        )
    )


# ------------------------------------------------------------------------ generate


def output_paths(output: Path, count: int, numbered: bool) -> list[Path]:
    """``out.png`` for one image; ``out-0.png``, ``out-1.png``, ... for several."""
    if not numbered:
        return [output]
    suffix = output.suffix or ".png"
    return [output.with_name(f"{output.stem}-{i}{suffix}") for i in range(count)]


def _error_message(status: int, text: str) -> str:
    try:
        body: Any = json.loads(text)
    except ValueError:
        snippet = " ".join(text.split())[:300]
        return f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message") or "(no message)")
        extras = [str(err[key]) for key in ("type",) if err.get(key)]
        if err.get("param"):
            extras.append(f"param: {err['param']}")
        extras.append(f"HTTP {status}")
        return f"{message} ({', '.join(extras)})"
    if isinstance(body, dict) and "detail" in body:
        return f"{body['detail']} (HTTP {status})"
    return f"HTTP {status}: {text[:300]}"


def _save_image(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in ("", ".png"):
        path.write_bytes(data)
        return
    import io

    from PIL import Image  # another format asked for by the file name: convert

    with Image.open(io.BytesIO(data)) as image:
        converted = image.convert("RGB") if path.suffix.lower() in (".jpg", ".jpeg") else image
        converted.save(path)


def cmd_generate(args: argparse.Namespace) -> int:
    """Submit a job, follow its events with a progress bar, save the images.

    Ctrl-C cancels the job on the gateway (DELETE /v1/jobs/{id}) before exiting 130.
    """
    import base64
    import binascii
    import time

    import httpx

    url = (args.url or os.environ.get("SDSERVE_URL") or DEFAULT_URL).rstrip("/")
    payload: dict[str, Any] = {
        "prompt": args.prompt,
        "n": args.n,
        "size": args.size,
        "response_format": "b64_json",
    }
    optional = {
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "seed": args.seed,
        "negative_prompt": args.negative_prompt,
    }
    payload.update({k: v for k, v in optional.items() if v is not None})

    def fail(message: str) -> int:
        print(f"sdserve generate: error: {message}", file=sys.stderr, flush=True)
        return 1

    deadline = time.monotonic() + args.timeout if args.timeout else None
    with httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0)) as client:
        try:
            response = client.post(f"{url}/v1/jobs", json=payload)
        except httpx.ConnectError as exc:
            return fail(
                f"cannot reach an sdserve gateway at {url} ({exc}).\n"
                "Is it running? Start one with `sdserve up`, or point --url at it."
            )
        except httpx.TimeoutException:
            return fail(f"{url} did not answer in time")
        except httpx.HTTPError as exc:
            return fail(f"request to {url} failed: {exc.__class__.__name__}: {exc}")
        if response.status_code >= 400:
            return fail(_error_message(response.status_code, response.text))
        try:
            job = response.json()
            job_id = str(job["id"])
            job_url = f"{url}{job['url']}"
            events_url = f"{url}{job['events_url']}"
        except (ValueError, KeyError, TypeError) as exc:
            return fail(f"unexpected response from {url}: {exc.__class__.__name__}: {exc}")
        print(f"sdserve generate: job {job_id} submitted to {url}", file=sys.stderr, flush=True)

        try:
            outcome, data = _follow_job(client, events_url, deadline)
        except KeyboardInterrupt:
            _cancel_job(client, job_url)
            print(f"sdserve generate: cancelled job {job_id}", file=sys.stderr, flush=True)
            return 130
        except _JobGone:
            return fail(
                f"job {job_id} is gone from {url} (did the gateway restart?); run the command again"
            )
        except _Failure as exc:
            return fail(str(exc))

    if outcome == "timeout":
        with httpx.Client(timeout=10.0) as client:
            _cancel_job(client, job_url)
        return fail(
            f"{url} did not finish within {args.timeout:g} s (see --timeout); job cancelled"
        )
    if outcome == "error":
        return fail(_job_error_message(data.get("error")))
    if outcome == "cancelled":
        return fail(f"job {job_id} was cancelled on the gateway")
    try:
        items = data["result"]["data"]
        if not isinstance(items, list) or not items:
            raise TypeError("no images in data")
        images = [base64.b64decode(item["b64_json"], validate=True) for item in items]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        return fail(f"unexpected response from {url}: {exc.__class__.__name__}: {exc}")

    paths = output_paths(Path(args.output), len(images), numbered=args.n > 1 or len(images) > 1)
    for item, image, path in zip(items, images, paths, strict=True):
        try:
            _save_image(image, path)
        except (OSError, ValueError) as exc:
            return fail(f"cannot save {path}: {exc}")
        seed = item.get("seed") if isinstance(item, dict) else None
        print(f"{path} (seed {seed if seed is not None else 'unknown'})")
    return 0


class _JobGone(Exception):
    """The gateway no longer knows the job (404): it restarted, or the job expired."""


class _Failure(Exception):
    """The job could not be followed; the message says why."""


FINAL_EVENTS = ("done", "error", "cancelled")
# The gateway pings an idle event stream every 15 s; silence longer than this is a fault.
_EVENTS_READ_TIMEOUT_S = 45.0
_RECONNECTS = 3


def _follow_job(client: Any, events_url: str, deadline: float | None) -> tuple[str, dict[str, Any]]:
    """Follow the job's Server-Sent Events with a progress bar, to its final event.

    Returns (event name, its data), or ("timeout", {}) past the deadline. A dropped
    stream is reconnected (the gateway sends the job's current state first).
    """
    import time

    import httpx
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    failures = 0
    with Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("queued", total=None)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return "timeout", {}
            read = _EVENTS_READ_TIMEOUT_S if remaining is None else min(remaining, 45.0)
            try:
                with client.stream(
                    "GET",
                    events_url,
                    headers={"Accept": "text/event-stream"},
                    timeout=httpx.Timeout(read, connect=10.0),
                ) as response:
                    if response.status_code == 404:
                        raise _JobGone
                    if response.status_code >= 400:
                        response.read()
                        raise _Failure(_error_message(response.status_code, response.text))
                    for name, data in _server_sent_events(response.iter_lines()):
                        failures = 0
                        if deadline is not None and time.monotonic() > deadline:
                            return "timeout", {}
                        if name == "progress":
                            step, total = int(data["step"]), int(data["total"])
                            label = "decoding" if step >= total else "denoising"
                            progress.update(task, description=label, completed=step, total=total)
                        elif name == "queued":
                            progress.update(task, description="queued")
                        elif name in FINAL_EVENTS:
                            if name == "done":
                                steps = int(data.get("total") or 0)
                                progress.update(
                                    task, description="done", completed=steps, total=steps
                                )
                            return name, data
            except httpx.HTTPError as exc:
                failures += 1
                if failures > _RECONNECTS:
                    raise _Failure(
                        f"lost the job's event stream ({exc.__class__.__name__}: {exc})"
                    ) from None
                time.sleep(0.5 * failures)
            except (ValueError, KeyError, TypeError) as exc:
                raise _Failure(f"unexpected event from the gateway: {exc}") from None


def _server_sent_events(lines: Any) -> Any:
    """(event, JSON data) pairs from the lines of a text/event-stream body."""
    name, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith(":"):
            continue  # a comment: the server's keep-alive ping
        else:
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)


def _cancel_job(client: Any, job_url: str) -> None:
    """DELETE the job; best effort (the gateway may already be gone)."""
    import contextlib

    import httpx

    with contextlib.suppress(httpx.HTTPError):
        client.delete(job_url, timeout=10.0)


def _job_error_message(error: Any) -> str:
    if not isinstance(error, dict):
        return "the job failed"
    message = str(error.get("message") or "the job failed")
    extras = [str(error["type"])] if error.get("type") else []
    if error.get("param"):
        extras.append(f"param: {error['param']}")
    return f"{message} ({', '.join(extras)})" if extras else message


if __name__ == "__main__":
    raise SystemExit(main())
