"""Settings for every part, from `SDSERVE_*` environment variables (pydantic-settings).

`load_settings()` is what processes call at start-up: an invalid value stops the process
with a message naming the environment variable, instead of failing later mid-request.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# One way only: the families know nothing of settings, so each fact lives in its spec.
from shared.convert.lora import LoraSpec, parse_lora_list
from shared.convert.plan import PLANNED_FAMILIES
from shared.families import get_family
from shared.sampler_names import SamplerName, canonical_sampler

ENV_PREFIX = "SDSERVE_"
# sysexits' EX_CONFIG: a supervisor stops at once instead of restarting a bad config.
EXIT_CONFIG = 78

FamilyName = Literal["tiny", "sd-v1", "sd-v2"]
Toggle = Literal["auto", "on", "off"]
Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
Size = tuple[int, int]  # (width, height), as OpenAI's "WxH"

_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
# What a browser sends as Origin: scheme://host[:port], nothing after.
_ORIGIN_RE = re.compile(r"^https?://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:\d{1,5})?$")

MAX_GUIDANCE_SCALE = 50.0


class ConfigError(Exception):
    """Raised at start-up for invalid settings; the message names the variable."""


def parse_size(text: str) -> Size:
    """Parse "WxH" into (width, height)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size like 512x512")
    return int(match.group(1)), int(match.group(2))


def format_size(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def redacted_url(url: str) -> str:
    """`url` without its password (redis://user:secret@host -> redis://user:***@host)."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{host}"


class Settings(BaseSettings):
    """Every setting of every part. Each part reads the ones it needs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    environment: Literal["development", "production"] = "development"
    # One JSON object per log line (with request ids), or plain text for a terminal.
    log_format: Literal["json", "text"] = "json"
    host: str = "127.0.0.1"
    # Each part has its own default port (central 8000, stages 8001-8003).
    port: int | None = Field(default=None, ge=1, le=65535)

    # --- model ---
    model: FamilyName = "tiny"
    # "embedded" (the weights shipped inside the package: tiny, trained on synthetic
    # scenes), "pretrained" (keras-cv's published files, downloaded once into cache_dir,
    # sha256-checked), "random" (seeded init, for tests of the machinery) or a directory
    # holding weights files (sha256-checked, never downloads). Empty: the family's
    # default (tiny: embedded; sd-v1, sd-v2: pretrained).
    weights: str = ""
    weights_seed: int = 0
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "sdserve")
    # One file for one component overrides the source above (a fine-tuned UNet, say).
    text_encoder_weights: Path | None = None
    diffusion_weights: Path | None = None
    decoder_weights: Path | None = None
    image_encoder_weights: Path | None = None
    # LoRA files merged into the UNet and text encoder at load, each at its scale:
    # "a.safetensors:0.8,b.safetensors" (sd-v1 / sd-v2; see shared.convert.lora).
    lora: Annotated[list[LoraSpec], NoDecode] = Field(default_factory=list)
    # Where the CLIP BPE vocabulary is; by default the copy packaged in shared/clip_vocab/.
    clip_vocab: Path | None = None
    sizes: Annotated[list[Size], NoDecode] = Field(default_factory=list)

    # --- execution strategy ("auto" picks per device, see shared.execution) ---
    xla: Toggle = "auto"
    batched_cfg: Toggle = "auto"
    precision: Precision = "auto"
    # Pad every model call's batch to a bucket (1, 2, 4 ... max), so each model sees a
    # few fixed shapes, all traced (and XLA-compiled) at warm-up. Off: calls run at their
    # own batch size (the behaviour before buckets, for comparison).
    batch_buckets: bool = True

    # --- limits ---
    max_images_per_request: int = Field(default=4, ge=1, le=64)
    # Empty: the family's (its spec's default_steps).
    default_steps: int | None = Field(default=None, ge=1, le=1000)
    # Empty: the family's (its spec's default_guidance_scale).
    default_guidance_scale: float | None = Field(default=None, ge=0, le=MAX_GUIDANCE_SCALE)
    # Any name shared.sampler_names accepts ("dpmpp_2m_karras", "DPM++ 2M Karras", ...).
    # Empty: the family's (its spec's default_sampler: ddim for every family).
    default_sampler: SamplerName | None = None
    max_steps: int = Field(default=100, ge=1, le=1000)
    # Rows (images) per model call; the diffusion scheduler's running batch size.
    max_batch: int = Field(default=8, ge=1, le=256)
    # Diffusion: requests join and leave the running batch at step boundaries. Off: one
    # request at a time (for comparison).
    continuous_batching: bool = True
    # Which waiting rows fill a step: first come first served, or one per request in turn.
    admission: Literal["fcfs", "fair"] = "fcfs"
    batch_wait_ms: float = Field(default=5.0, ge=0, le=10_000)
    queue_size: int = Field(default=64, ge=1, le=100_000)
    # The stage services' request bodies (npz tensors), and any body the gateway reads
    # from a stage.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # The gateway's JSON bodies (generations, Hugging Face text to image): a prompt and a
    # negative prompt of at most 4000 characters each are under 100 KB even when every
    # character is \u-escaped as a surrogate pair; 256 KiB leaves room and keeps a
    # hostile body's parse to milliseconds.
    max_json_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # The gateway's edits (multipart or base64 JSON) and jobs (a job may be an edit)
    # bodies: two incompressible RGBA PNGs at 1024x1024 (the largest upload a 512x512
    # deployment accepts, see central/serving.py) are 8 MiB, 10.7 MiB in base64.
    max_edit_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Central's jobs API (/v1/jobs): jobs held at once (in all, across gateway replicas),
    # and how long a finished job's result is kept (or until room is needed for a new job).
    max_jobs: int = Field(default=64, ge=1, le=100_000)
    job_ttl_s: float = Field(default=600.0, gt=0)
    # Where jobs live: "memory" (this gateway process; a restart forgets them) or a
    # redis:// / rediss:// / unix:// URL of a Redis or Valkey server (standalone, not
    # Cluster) that every gateway replica shares, so any replica serves any job.
    job_store: str = "memory"
    # The gateway running a job renews its lease this often x3; a job whose lease has
    # lapsed (its gateway died) is taken over by another replica and run again, seeded,
    # up to job_attempts runs in all.
    job_lease_s: float = Field(default=10.0, ge=0.5, le=3600)
    job_attempts: int = Field(default=3, ge=1, le=20)

    # --- topology (central) ---
    text_encoder_url: str | None = None
    diffusion_url: str | None = None
    decoder_url: str | None = None
    connect_timeout_s: float = Field(default=3.0, gt=0)
    read_timeout_s: float = Field(default=300.0, gt=0)
    # Each stage URL is a comma-separated list of replicas; a name that resolves to
    # several addresses (a headless Service) is one replica per address, looked up again
    # this often. A call that did no work, or whose replica died, is tried on another
    # replica, up to this many attempts in all.
    resolve_interval_s: float = Field(default=10.0, gt=0)
    # Several models on one gateway (TOML, see shared.pipeline.catalog); unset: one
    # model, SDSERVE_MODEL with SDSERVE_WEIGHTS.
    models_file: Path | None = None
    stage_attempts: int = Field(default=3, ge=1, le=10)

    # Trace every graph a request can hit before /readyz says ready, so no request pays
    # for tracing. Off: ready sooner, and the first request of each shape traces its
    # graph (development and test stacks that restart often).
    warm_up: bool = True

    # Serve /metrics on this port of its own (same host) instead of the main one, so a
    # network policy can open it to the scraper only. Unset: /metrics on the main port.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    # On SIGTERM: refuse new requests (503) and finish in-flight ones for this long.
    shutdown_grace_s: int = Field(default=30, ge=0, le=3600)
    # Idle keep-alive connections stay open this long. uvicorn's default (5 s) equals
    # httpx's own idle expiry, so a client could send a request on a connection the
    # server was closing at that instant (seen as a ReadError under load); it must
    # outlast clients' and load balancers' idle timeouts (often 60 s).
    keep_alive_s: int = Field(default=75, ge=1, le=3600)

    # --- security ---
    # Central: comma-separated API keys clients send as `Authorization: Bearer <key>`;
    # unset means the public API is open. Health, metrics and the docs stay open.
    api_keys: SecretStr | None = None
    # Central: a file of API keys (one per line, or comma-separated; `#` comments), such
    # as a mounted Kubernetes Secret; its keys are added to SDSERVE_API_KEYS'. Read at
    # start-up.
    api_keys_file: Path | None = None
    # Central in production refuses to start without API keys unless this says the open
    # gateway is meant (behind an authenticating proxy, say).
    allow_anonymous: bool = False
    # Central: requests and unfinished jobs one API key may have at once, and event
    # streams it may hold open (429 beyond either); counted in the job store, so across
    # gateway replicas when that is Redis.
    max_concurrent_per_key: int = Field(default=4, ge=1, le=10_000)
    max_streams_per_key: int = Field(default=16, ge=1, le=10_000)
    # Stage services require `Authorization: Bearer <token>` on model routes when set.
    # Comma-separated to rotate a token: central sends the first, stages accept any
    # (docs/deploy.md: add the new one to the stages, switch central, drop the old).
    internal_token: SecretStr | None = None
    # Browsers (see shared.browsers). Host names the gateway answers, comma-separated
    # ("*.example.com" for a domain's names, "*" for any); loopback names are always in.
    # Empty: loopback names only when bound to a loopback address, any Host (logged as a
    # warning) when bound to another. /healthz, /readyz and /metrics answer any Host.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Other sites' origins (scheme://host[:port]) whose pages may call the gateway, with
    # CORS answers for them; a request from any other site (an Origin header that is
    # neither listed nor the gateway's own) is refused with 403 before any work.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("sizes", mode="before")
    @classmethod
    def _parse_sizes(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p for p in value.split(",") if p.strip()]
            return [parse_size(p) for p in parts]
        return value

    @field_validator("lora", mode="before")
    @classmethod
    def _parse_lora(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_lora_list(value)
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list):
            return value
        hosts = [str(h).strip().lower() for h in value if str(h).strip()]
        for host in hosts:
            if ":" in host and not host.startswith("["):
                raise ValueError(f"{host!r}: a host name without a port (any port is allowed)")
            if "*" in host[1:] or (host.startswith("*") and host != "*" and host[:2] != "*."):
                raise ValueError(f"{host!r}: a wildcard must be '*' or like '*.example.com'")
        return hosts

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list):
            return value
        origins = [str(o).strip().rstrip("/").lower() for o in value if str(o).strip()]
        for origin in origins:
            if origin != "*" and not _ORIGIN_RE.match(origin):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return origins

    @field_validator("default_steps", "default_guidance_scale", mode="before")
    @classmethod
    def _empty_is_the_familys(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("default_sampler", mode="before")
    @classmethod
    def _parse_sampler(cls, value: object) -> object:
        return None if value is None or value == "" else canonical_sampler(value)

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, value: str) -> str:
        if value in ("", "embedded", "random", "pretrained"):
            return value
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"{value!r} is neither 'embedded', 'pretrained', 'random' nor a directory"
            )
        return str(path)

    @field_validator("job_store")
    @classmethod
    def _check_job_store(cls, value: str) -> str:
        value = value.strip()
        if value == "memory" or value.startswith(("redis://", "rediss://", "unix://")):
            return value
        raise ValueError(f"{redacted_url(value)!r} is neither 'memory' nor a redis:// URL")

    @field_validator(
        "text_encoder_weights", "diffusion_weights", "decoder_weights", "image_encoder_weights"
    )
    @classmethod
    def _check_weights_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"{value} is not a file")
        if not value.name.endswith((".h5", ".safetensors")):
            raise ValueError(f"{value} must be .h5, .weights.h5 or .safetensors")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        spec = get_family(self.model).spec
        if not self.sizes:
            self.sizes = list(spec.default_sizes)
        if not self.weights:
            self.weights = spec.default_weights
        if self.lora and self.model not in PLANNED_FAMILIES:
            raise ValueError(f"lora: LoRA merges into sd-v1 and sd-v2 models, not {self.model}")
        if self.weights == "embedded" and self.model != "tiny":
            raise ValueError(
                f"weights: only the tiny family has embedded weights; for {self.model} use "
                "pretrained, a directory or random"
            )
        multiple = spec.size_multiple
        for width, height in self.sizes:
            if width <= 0 or height <= 0 or width % multiple or height % multiple:
                raise ValueError(
                    f"sizes: {width}x{height} is not a multiple of {multiple}, "
                    f"which the {self.model} family needs"
                )
        if self.steps > self.max_steps:
            raise ValueError(f"default_steps: {self.steps} must not exceed max_steps")
        if self.environment == "production":
            if self.weights == "random":
                raise ValueError("weights: random weights are refused in production")
            if not self.internal_tokens:
                raise ValueError("internal_token: must be set in production")
        return self

    @property
    def steps(self) -> int:
        """The steps a request gets when it names none (set, or the family's)."""
        if self.default_steps is None:
            return get_family(self.model).spec.default_steps
        return self.default_steps

    @property
    def guidance_scale(self) -> float:
        """The guidance a request gets when it names none (set, or the family's)."""
        if self.default_guidance_scale is None:
            return get_family(self.model).spec.default_guidance_scale
        return self.default_guidance_scale

    @property
    def sampler(self) -> SamplerName:
        """The sampler a request gets when it names none (set, or the family's)."""
        if self.default_sampler is None:
            return get_family(self.model).spec.default_sampler
        return self.default_sampler

    @property
    def weights_label(self) -> str:
        """How the weights are described to clients (/v1/info, responses): a directory
        by its name only, never its path on the server."""
        if self.weights == "random":
            label = f"random (seed {self.weights_seed}, not trained)"
        elif self.weights in ("embedded", "pretrained"):
            label = self.weights
        else:
            label = f"directory {Path(self.weights).name}"
        return label + "".join(f" + LoRA {spec.label}" for spec in self.lora)

    def api_key_list(self) -> list[str]:
        """Every configured API key: SDSERVE_API_KEYS and SDSERVE_API_KEYS_FILE's."""
        text = self.api_keys.get_secret_value() if self.api_keys else ""
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text().splitlines()
            text += "," + ",".join(line.split("#", 1)[0] for line in lines)
        return [key.strip() for key in text.split(",") if key.strip()]

    def check_gateway(self) -> None:
        """What the gateway (not a stage) needs of its settings; ConfigError otherwise."""
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ConfigError(f"{ENV_PREFIX}API_KEYS_FILE: {self.api_keys_file} is not a file")
        anonymous = not self.api_key_list()
        if self.environment == "production" and anonymous and not self.allow_anonymous:
            raise ConfigError(
                f"{ENV_PREFIX}API_KEYS: production needs API keys (or "
                f"{ENV_PREFIX}API_KEYS_FILE); set {ENV_PREFIX}ALLOW_ANONYMOUS=true "
                "to serve without them on purpose"
            )

    @property
    def internal_tokens(self) -> list[str]:
        """The stages' accepted internal tokens; central sends the first. Empty: no check."""
        if self.internal_token is None:
            return []
        return [t.strip() for t in self.internal_token.get_secret_value().split(",") if t.strip()]

    @property
    def job_store_label(self) -> str:
        """The job store as logs and /v1/info show it: no password."""
        return redacted_url(self.job_store)

    def component_weights_file(self, component: str) -> Path | None:
        return {
            "text_encoder": self.text_encoder_weights,
            "diffusion_model": self.diffusion_weights,
            "decoder": self.decoder_weights,
            "image_encoder": self.image_encoder_weights,
        }[component]


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            msg = str(err["msg"]).removeprefix("Value error, ")
            if loc:
                lines.append(f"{ENV_PREFIX}{loc[0].upper()}: {msg}")
            else:
                # Model-level checks say "field: message"; name the variable from it.
                field, _, rest = msg.partition(": ")
                lines.append(f"{ENV_PREFIX}{field.upper()}: {rest or msg}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None
