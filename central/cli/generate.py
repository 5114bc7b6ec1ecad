"""``sdserve generate``: submit a job to a running gateway, follow it, save the images.

The job's progress comes from its Server-Sent Events stream (read with httpx-sse) and is
shown as a progress bar; Ctrl-C cancels the job on the gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central.cli import arguments
from central.cli.arguments import DEFAULT_URL

if TYPE_CHECKING:
    import httpx


def add_parser(commands: Any) -> None:
    """Add the command to ``commands`` (what ``add_subparsers`` returned)."""
    gen = commands.add_parser(
        "generate",
        help="generate images with a running gateway and save them",
        description=(
            "Submit a job to a running gateway (POST /v1/jobs), show its progress, and save "
            "the images as PNG files. With -n 1 the image goes to --output; with -n N > 1 "
            "to OUT-0.png ... OUT-(N-1).png. Each path is printed with its seed. An existing "
            "file is never overwritten without --force. Ctrl-C cancels the job on the gateway."
        ),
    )
    gen.set_defaults(handler=run)
    gen.add_argument("prompt", metavar="PROMPT", help="what to draw")
    gen.add_argument(
        "-o", "--output", default="out.png", metavar="PATH", help="where to save (default: out.png)"
    )
    gen.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="overwrite output files that already exist (default: refuse, before submitting)",
    )
    gen.add_argument(
        "--url",
        default=None,
        help=f"the gateway (default: SDSERVE_URL or {DEFAULT_URL})",
    )
    gen.add_argument(
        "--size",
        type=arguments.size,
        default="64x64",
        metavar="WxH",
        help="image size (default: 64x64)",
    )
    gen.add_argument(
        "-n",
        type=arguments.positive_int,
        default=1,
        metavar="N",
        help="number of images (default: 1)",
    )
    gen.add_argument(
        "--steps", type=arguments.positive_int, default=None, help="sampler steps (server default)"
    )
    gen.add_argument(
        "--guidance",
        type=float,
        default=None,
        metavar="G",
        help="classifier-free guidance scale (server default)",
    )
    gen.add_argument(
        "--sampler",
        default=None,
        metavar="NAME",
        help="ddim, dpmpp_2m, dpmpp_2m_karras or euler_ancestral, or a name other front ends "
        'use ("DPM++ 2M Karras", "Euler a", k_euler_a, ...: the gateway\'s /v1/info lists '
        "them; server default: ddim)",
    )
    gen.add_argument(
        "--seed", type=int, default=None, metavar="S", help="seed (server picks one if unset)"
    )
    gen.add_argument(
        "--negative-prompt", default=None, metavar="TEXT", help="what to steer away from"
    )
    gen.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="which of the gateway's models (GET /v1/models; default: its first)",
    )
    gen.add_argument(
        "--timeout",
        type=arguments.seconds,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for the images (default: 600)",
    )


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


def _save_image(data: bytes, path: Path, *, force: bool = False) -> None:
    """Write the image; without ``force`` an existing file is an error (FileExistsError),
    even one that appeared while the job ran."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if force else "xb"
    if path.suffix.lower() in ("", ".png"):
        with path.open(mode) as sink:
            sink.write(data)
        return
    import io

    from PIL import Image  # another format asked for by the file name: convert

    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:  # before the file is created
        raise ValueError(f"unknown file extension: {path.suffix}")
    with Image.open(io.BytesIO(data)) as image:
        converted = image.convert("RGB") if path.suffix.lower() in (".jpg", ".jpeg") else image
        with path.open(mode) as sink:
            converted.save(sink, format=image_format)


def run(args: argparse.Namespace) -> int:
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
        "sampler": args.sampler,
        "seed": args.seed,
        "negative_prompt": args.negative_prompt,
        "model": args.model,
    }
    payload.update({k: v for k, v in optional.items() if v is not None})

    def fail(message: str) -> int:
        print(f"sdserve generate: error: {message}", file=sys.stderr, flush=True)
        return 1

    # Refuse before submitting: no work is done for images that could not be saved.
    planned = output_paths(Path(args.output), args.n, numbered=args.n > 1)
    existing = [str(p) for p in planned if p.exists()]
    if existing and not args.force:
        return fail(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --force to overwrite, or choose another --output"
        )

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

    # Prompt words the model was not trained on: the image may not show them.
    warnings = data["result"].get("warnings")
    for warning in warnings if isinstance(warnings, list) else []:
        if isinstance(warning, dict) and warning.get("message"):
            print(f"sdserve generate: warning: {warning['message']}", file=sys.stderr, flush=True)

    paths = output_paths(Path(args.output), len(images), numbered=args.n > 1 or len(images) > 1)
    for item, image, path in zip(items, images, paths, strict=True):
        try:
            _save_image(image, path, force=args.force)
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


def _follow_job(
    client: httpx.Client, events_url: str, deadline: float | None
) -> tuple[str, dict[str, Any]]:
    """Follow the job's Server-Sent Events with a progress bar, to its final event.

    Returns (event name, its data), or ("timeout", {}) past the deadline. A dropped
    stream is reconnected (the gateway sends the job's current state first).
    """
    import time

    import httpx
    from httpx_sse import connect_sse
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
            read = (
                _EVENTS_READ_TIMEOUT_S
                if remaining is None
                else min(remaining, _EVENTS_READ_TIMEOUT_S)
            )
            try:
                with connect_sse(
                    client,
                    "GET",
                    events_url,
                    timeout=httpx.Timeout(read, connect=10.0),
                ) as events:
                    response = events.response
                    if response.status_code == 404:
                        raise _JobGone
                    if response.status_code >= 400:
                        response.read()
                        raise _Failure(_error_message(response.status_code, response.text))
                    for event in events.iter_sse():
                        failures = 0
                        if deadline is not None and time.monotonic() > deadline:
                            return "timeout", {}
                        if not event.data:
                            continue  # every event of the gateway carries JSON data
                        name, data = event.event, event.json()
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


def _cancel_job(client: httpx.Client, job_url: str) -> None:
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
