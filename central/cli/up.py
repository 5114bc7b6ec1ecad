"""``sdserve up``: run the stage services and the gateway as processes on this machine.

Which processes a topology needs, with their argv and environment, is decided here
(:func:`build_processes`; where the jobs live, and the redis-server `--jobs redis` may
start, in :mod:`central.cli.up_jobs`); :mod:`central.supervisor` runs them, restarts any
that dies and stops them all on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central.cli import arguments, up_jobs
from central.cli.arguments import DEFAULT_URL
from central.cli.up_ports import check_ports

if TYPE_CHECKING:
    from central.supervisor.specs import ChildSpec
    from shared.pipeline.models_file import ModelEntry

TOPOLOGIES = ("three-endpoints", "all-in-one", "hybrid")
DEFAULT_PORT = 8000
DEFAULT_BASE_PORT = 8001
# Stage services always listen on loopback: only central talks to them, on this machine.
STAGE_HOST = "127.0.0.1"
# Replica k (from 0) of a stage listens on its port + k * REPLICA_PORT_STEP.
REPLICA_PORT_STEP = 10


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
    # Processes per remote stage (absent: one).
    replicas: Mapping[str, int] = field(default_factory=dict)
    # --models-file: its models (the first is model/weights above), and where the file
    # handed to the gateway (with the diffusion services' URLs) is written.
    models: tuple[ModelEntry, ...] = ()
    models_file_out: str = ""
    # SDSERVE_JOB_STORE for the gateway, and the data directory of the redis-server
    # `sdserve up` starts for it ("": none; see central.cli.up_jobs).
    job_store: str = "memory"
    redis_dir: str = ""

    def replicas_of(self, stage: str) -> int:
        return self.replicas.get(stage, 1)


# The diffusion service of model m (from 0) listens on its stage port + m * MODEL_PORT_STEP.
MODEL_PORT_STEP = 100


def stage_ports(config: UpConfig, stage: Stage, model_index: int = 0) -> list[int]:
    """The ports of a stage's replicas (of one model's diffusion service)."""
    first = config.base_port + stage.port_offset + model_index * MODEL_PORT_STEP
    return [first + k * REPLICA_PORT_STEP for k in range(config.replicas_of(stage.name))]


def gateway_models(config: UpConfig) -> list[ModelEntry]:
    """The models file the gateway gets: each model with its diffusion replicas' URLs
    when diffusion runs as services (else the gateway runs every model itself)."""
    if "diffusion" not in REMOTE_STAGES[config.topology]:
        return list(config.models)
    diffusion = next(s for s in STAGES if s.name == "diffusion")
    return [
        entry.model_copy(
            update={
                "diffusion_url": ",".join(
                    http_url(STAGE_HOST, p) for p in stage_ports(config, diffusion, m)
                )
            }
        )
        for m, entry in enumerate(config.models)
    ]


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


def add_parser(commands: Any) -> None:
    """Add the command to ``commands`` (what ``add_subparsers`` returned)."""
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
    up.set_defaults(handler=run)
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
        choices=arguments.MODELS,
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
        type=arguments.sizes,
        default=None,
        metavar="WxH,...",
        help="sizes to serve, e.g. 64x64,128x128 (default: SDSERVE_SIZES or the family's)",
    )
    up.add_argument(
        "--host", default="127.0.0.1", help="where the gateway listens (default: 127.0.0.1)"
    )
    up.add_argument(
        "--port", type=arguments.port, default=DEFAULT_PORT, help="gateway port (default: 8000)"
    )
    up.add_argument(
        "--base-port",
        type=arguments.port,
        default=DEFAULT_BASE_PORT,
        help="text encoder port; diffusion uses base+1, decoder base+2; further replicas "
        f"add {REPLICA_PORT_STEP} each (default: 8001)",
    )
    up.add_argument(
        "--replicas",
        type=arguments.replicas,
        default={},
        metavar="STAGE=N,...",
        help="run N processes of a stage service, e.g. diffusion=2,decoder=2; the gateway "
        "routes each call to the least-loaded one and retries elsewhere when one fails "
        "(default: one each)",
    )
    up.add_argument(
        "--models-file",
        type=Path,
        default=None,
        metavar="TOML",
        help="serve several models of one family: a diffusion service each (with its "
        "weights), one text encoder and decoder for all; requests pick one with `model` "
        "(see shared/pipeline/catalog.py for the format; default: SDSERVE_MODELS_FILE)",
    )
    up.add_argument(
        "--jobs",
        choices=up_jobs.JOBS,
        default=None,
        help="where the gateway keeps jobs: memory (in the gateway; a restart loses them) or "
        "redis (SDSERVE_JOB_STORE when it is a redis:// URL, else a redis-server started "
        f"here on 127.0.0.1, port --base-port + {up_jobs.REDIS_PORT_OFFSET} "
        f"({up_jobs.redis_port(DEFAULT_BASE_PORT)} by default), its append-only file under "
        "SDSERVE_CACHE_DIR/redis/PORT, so jobs survive restarts; needs redis-server "
        "installed) (default: SDSERVE_JOB_STORE, else memory)",
    )
    up.add_argument(
        "--ready-timeout",
        type=arguments.seconds,
        default=600.0,
        metavar="SECONDS",
        help="stop everything if the parts are not all ready by then; 0: wait forever "
        "(default: 600)",
    )
    up.add_argument(
        "--grace",
        type=arguments.seconds,
        default=10.0,
        metavar="SECONDS",
        help="on stop, how long each process gets after SIGTERM before SIGKILL (default: 10)",
    )
    up.add_argument("--no-color", action="store_true", help="no colours in the log prefixes")


def _absolute(weights: str) -> str:
    if weights in ("embedded", "random", "pretrained", ""):
        return weights
    return str(Path(weights).expanduser().resolve())


def resolve_up_config(args: argparse.Namespace, env: Mapping[str, str]) -> UpConfig:
    """Merge flags (first), SDSERVE_* environment variables, then defaults.

    Raises ConfigError for a models file that cannot be served here.
    """
    from shared.config import ConfigError
    from shared.families import FAMILY_NAMES, get_family
    from shared.pipeline.models_file import read_models_file

    models: tuple[ModelEntry, ...] = ()
    models_file = args.models_file or env.get("SDSERVE_MODELS_FILE")
    if models_file:
        entries = read_models_file(Path(models_file))
        families = sorted({e.family for e in entries})
        if len(families) > 1:
            raise ConfigError(
                f"--models-file: sdserve up runs one family's text encoder and decoder; "
                f"the file has {', '.join(families)}"
            )
        models = tuple(e.model_copy(update={"weights": _absolute(e.weights)}) for e in entries)
    model = models[0].family if models else args.model or env.get("SDSERVE_MODEL") or "tiny"
    family_weights = get_family(model).spec.default_weights if model in FAMILY_NAMES else ""
    weights = models[0].weights if models else ""
    weights = _absolute(weights or args.weights or env.get("SDSERVE_WEIGHTS") or family_weights)
    sizes = args.sizes or env.get("SDSERVE_SIZES") or None
    job_store, redis_dir = up_jobs.resolve_job_store(args.jobs, env, args.base_port)
    return UpConfig(
        topology=args.topology,
        model=model,
        weights=weights,
        sizes=sizes,
        host=args.host,
        port=args.port,
        base_port=args.base_port,
        replicas=dict(args.replicas),
        models=models,
        job_store=job_store,
        redis_dir=redis_dir,
    )


def build_processes(
    config: UpConfig,
    base_env: Mapping[str, str],
    python: str | None = None,
    redis_server: str = "redis-server",
) -> list[ChildSpec]:
    """The processes `sdserve up` starts for a topology, with their argv and environment.

    Every process gets ``base_env`` with SDSERVE_MODEL, SDSERVE_WEIGHTS and (when set)
    SDSERVE_SIZES from ``config``. The stage URL variables are removed everywhere and set
    only on central, for the stages that run remote in this topology, so a stray
    SDSERVE_DIFFUSION_URL cannot turn an all-in-one gateway into a client; so is
    SDSERVE_JOB_STORE (only central keeps jobs), set to ``config.job_store``. With
    ``config.redis_dir``, a redis-server (``redis_server``) for the jobs comes first.
    """
    from central.supervisor.specs import ChildSpec

    python = python or sys.executable
    only_central = [stage.url_env for stage in STAGES] + [up_jobs.JOB_STORE_ENV]
    common = {k: v for k, v in base_env.items() if k not in only_central}
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
    if config.redis_dir:
        specs.append(
            up_jobs.redis_process(
                config.base_port, config.redis_dir, base_env, redis_server, outlives=["central"]
            )
        )
    central_env = dict(common)
    central_env[up_jobs.JOB_STORE_ENV] = config.job_store
    for stage in STAGES:
        if stage.name not in remote:
            continue
        # The models file's other models: a diffusion service each, with their weights.
        models = config.models if stage.name == "diffusion" and config.models else ()
        variants = [(stage.name, common)] + [
            (f"{stage.name}-{entry.name}", {**common, "SDSERVE_WEIGHTS": entry.weights})
            for entry in models[1:]
        ]
        for m, (name, env) in enumerate(variants):
            urls = []
            for k, port in enumerate(stage_ports(config, stage, m)):
                url = http_url(STAGE_HOST, port)
                specs.append(
                    ChildSpec(
                        name=name if k == 0 else f"{name}-{k + 1}",
                        argv=[
                            python,
                            "-m",
                            stage.module,
                            "--host",
                            STAGE_HOST,
                            "--port",
                            str(port),
                        ],
                        env=dict(env),
                        ready_url=f"{url}/readyz",
                    )
                )
                urls.append(url)
            if m == 0:
                central_env[stage.url_env] = ",".join(urls)
    if config.models:
        central_env["SDSERVE_MODELS_FILE"] = config.models_file_out
    specs.append(
        ChildSpec(
            name="central",
            argv=[python, "-m", "central", "--host", config.host, "--port", str(config.port)],
            env=central_env,
            ready_url=f"{http_url(config.host, config.port)}/readyz",
        )
    )
    return specs


def _example_size(config: UpConfig) -> str:
    if config.sizes:
        return config.sizes.split(",")[0]
    from shared.config import format_size
    from shared.families import FAMILY_NAMES, get_family

    if config.model not in FAMILY_NAMES:
        return format_size((512, 512))
    return format_size(get_family(config.model).spec.default_sizes[0])


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
    from shared.families import FAMILY_NAMES, get_family

    family = config.model if config.model in FAMILY_NAMES else "sd-v1"
    prompt = get_family(family).spec.example_prompt
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
        f"  jobs:    {up_jobs.describe(config.job_store, config.redis_dir)}",
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


def run(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import tempfile

    from central.supervisor.runner import Supervisor
    from shared.config import ConfigError, load_settings

    try:
        config = resolve_up_config(args, os.environ)
    except ConfigError as exc:
        print(f"sdserve up: {exc}", file=sys.stderr)
        return 2
    if config.models:  # the gateway's copy, with the diffusion services' URLs
        from shared.pipeline.models_file import render_models_file

        out = Path(tempfile.mkdtemp(prefix="sdserve-up-")) / "models.toml"
        out.write_text(render_models_file(gateway_models(config)), encoding="utf-8")
        config = dataclasses.replace(config, models_file_out=str(out))
    local = [s for s in config.replicas if s not in REMOTE_STAGES[config.topology]]
    if local:
        print(
            f"sdserve up: --replicas: {', '.join(local)} runs inside the gateway in the "
            f"{config.topology} topology (replicas need three-endpoints or hybrid)",
            file=sys.stderr,
        )
        return 2
    overrides: dict[str, object] = {
        "model": config.model,
        "weights": config.weights,
        "job_store": config.job_store,
    }
    if config.sizes:
        overrides["sizes"] = config.sizes
    try:  # the same check every process makes at start-up, once, before starting any
        load_settings(**overrides)
    except ConfigError as exc:
        print(f"sdserve up: {exc}", file=sys.stderr)
        return 2

    redis_server = ""
    if config.redis_dir:
        redis_server = up_jobs.find_redis_server() or ""
        if not redis_server:
            print(f"sdserve up: --jobs redis: {up_jobs.INSTALL_HINT}", file=sys.stderr)
            return 2
    specs = build_processes(config, os.environ, redis_server=redis_server)
    problems = check_ports(specs)
    if problems:
        for problem in problems:
            print(f"sdserve up: {problem}", file=sys.stderr)
        print("sdserve up: pick others with --port / --base-port", file=sys.stderr)
        return 2

    if config.redis_dir:  # redis-server does not create its directory
        Path(config.redis_dir).mkdir(mode=0o700, parents=True, exist_ok=True)

    supervisor = Supervisor(specs, color=False if args.no_color else None, grace_s=args.grace)
    parts = ", ".join(f"{s.name} on {s.ready_url.rsplit('/', 1)[0]}" for s in specs if s.ready_url)
    supervisor.log(
        f"starting {config.topology}: {parts}; model {config.model}, weights {config.weights}"
        + (f", sizes {config.sizes}" if config.sizes else "")
        + f"; jobs {up_jobs.describe(config.job_store, config.redis_dir)}"
    )
    if config.weights == "random":
        supervisor.log(random_weights_warning(), error=True)
    timeout = args.ready_timeout or None
    return asyncio.run(
        supervisor.run(
            ready_timeout_s=timeout, on_ready=lambda: supervisor.write(ready_banner(config))
        )
    )
