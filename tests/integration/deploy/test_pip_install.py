"""`pip install .` into a fresh virtual environment gives an `sdserve up` that serves.

The wheel is built from a copy of what pyproject.toml packages, installed with
`--no-deps` into a new venv, and the dependencies (TensorFlow, Keras, ...) come from this
test's own environment through a .pth file holding its site-packages as a plain path line:
a path line adds that directory to sys.path but runs none of the .pth files in it, so an
editable install of the source tree there (its import finder) stays inactive. Started from
a temporary directory with no PYTHONPATH, `shared`, `central` and `services` can only come
from the installed wheel; so can the package data the stack needs (the CLIP vocabulary,
tiny's weights, the web page), which a source checkout would otherwise have supplied.

`sdserve up --topology hybrid` is the cheapest topology that starts a stage service (the
`services` package) next to the gateway; the test waits for /readyz, draws one tiny image,
and stops the whole process group with one SIGTERM, as a terminal or `make up` does.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from shared.service_process import REPO_ROOT, free_port, service_env

PACKAGES = ("shared", "central", "services")
# Bounds that turn a hang into a failure; not speed checks.
READY_TIMEOUT_S = 540.0
STOP_TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def packaged_sources(destination: Path) -> Path:
    """A copy of what the wheel is built from: pyproject.toml, its readme, and the
    top-level packages it includes (so the build leaves nothing in the checkout)."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = sorted({pattern.rstrip("*").rstrip(".") for pattern in includes})
    assert set(tops) == set(PACKAGES), tops
    destination.mkdir()
    for name in ("pyproject.toml", pyproject["project"]["readme"]):
        shutil.copy2(REPO_ROOT / name, destination / name)
    for top in tops:
        shutil.copytree(
            REPO_ROOT / top, destination / top, ignore=shutil.ignore_patterns("__pycache__")
        )
    return destination


def run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the sdserve wheel installed (no dependencies), and this
    environment's site-packages behind it as plain sys.path entries."""
    root = tmp_path_factory.mktemp("pip-install")
    sources = packaged_sources(root / "src")
    # setuptools is in this environment (TensorFlow depends on it): no index needed.
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--wheel-dir", str(root / "dist"), str(sources)],
        cwd=root,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("sdserve-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--no-compile", "--quiet", str(wheel)],
        cwd=root,
    )  # fmt: skip
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    here = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "_sdserve_test_dependencies.pth").write_text("".join(f"{p}\n" for p in here))
    return venv


def venv_env(cache: Path) -> dict[str, str]:
    env = service_env({"SDSERVE_CACHE_DIR": str(cache), "SDSERVE_WARM_UP": "false"})
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def test_the_installed_wheel_runs_sdserve_up_until_one_sigterm(
    fresh_venv: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "run"  # outside the checkout: nothing importable from the cwd
    workdir.mkdir()
    env = venv_env(tmp_path / "cache")
    site = fresh_venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = site / "site-packages"

    # What that interpreter, in that directory and environment, imports: the wheel's copy.
    where = subprocess.check_output(
        [str(fresh_venv / "bin" / "python"), "-c",
         "import importlib, sys; "
         f"print('\\n'.join(importlib.import_module(m).__file__ for m in {PACKAGES!r}))"],
        cwd=workdir, env=env, text=True,
    ).split()  # fmt: skip
    assert [Path(p).parent for p in where] == [site / name for name in PACKAGES]

    port, base_port = free_port(), free_port() - 1  # hybrid: diffusion on base + 1
    log_path = tmp_path / "up.log"
    command = [
        str(fresh_venv / "bin" / "sdserve"), "up", "--topology", "hybrid", "--model", "tiny",
        "--sizes", "64x64", "--port", str(port), "--base-port", str(base_port), "--no-color",
    ]  # fmt: skip
    started = time.monotonic()
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal gives it
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            text = log_path.read_text()
            assert up.poll() is None, text[-4000:]
            assert "restarting in" not in text, text[-4000:]  # a part died
            assert time.monotonic() - started < READY_TIMEOUT_S, text[-4000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        ready_s = time.monotonic() - started

        response = httpx.post(
            f"{url}/v1/images/generations",
            json={"prompt": "a red square on a white background", "size": "64x64",
                  "steps": 3, "seed": 1},
            timeout=120,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
        assert image.size == (64, 64)
        info = httpx.get(f"{url}/v1/info", timeout=10).json()
        assert info["topology"] == "hybrid" and info["random_weights"] is False
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        try:
            code = up.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
    text = log_path.read_text()
    print(f"ready after {ready_s:.1f} s")
    assert code == 0, text[-4000:]

    # Both processes loaded tiny's embedded weights, the wheel's package data (the `shared`
    # each of them imports is the installed one, checked above; labels name no paths).
    loaded = re.findall(r"^(\w+) +\| .*built tiny (\w+) .*weights: embedded:(\S+) ", text, re.M)
    assert {(name, component) for name, component, _ in loaded} == {
        ("diffusion", "diffusion_model"),
        ("central", "text_encoder"),
        ("central", "decoder"),
        ("central", "image_encoder"),
    }, text[-4000:]
    assert all(label.endswith(".weights.h5") for _, _, label in loaded), loaded
    # One SIGTERM to the group: a clean stop, nothing killed, every child gone.
    assert text.count("received SIGTERM") == 1 and "killing" not in text, text[-4000:]
    assert text.rstrip().endswith("stopped"), text[-4000:]
    pids = [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)\)", text)]
    assert len(pids) == 2 and all(gone(pid) for pid in pids), pids


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
