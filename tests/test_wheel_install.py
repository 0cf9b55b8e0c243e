"""A wheel install serves: build the wheel, install it (not editable) into a
fresh virtualenv, run `smartflow serve` from an empty directory, ask
`mock-gpt` for a chat completion.

No network: the wheel is built without build isolation (the build backend
comes from this venv) and installed with --no-deps; the new venv sees the
dependencies through a .pth file naming this venv's site-packages. Python
does not process .pth files inside a directory a .pth file added, so this
venv's editable install of smartflow stays invisible there, and the test
checks that `smartflow` and `workers` are the wheel's copies.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from harness.gateway import http_get_status
from harness.ports import free_port

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(120)


def _run(*argv: str | Path, cwd: Path, timeout_s: float = 60) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=_clean_env(), check=False, capture_output=True,
        text=True, timeout=timeout_s,
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SMARTFLOW_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _this_venvs_site_packages() -> str:
    (found,) = {p for p in sys.path
                if p.endswith("site-packages") and Path(p).is_relative_to(sys.prefix)}
    return found


def _build_wheel(tmp_path: Path) -> Path:
    # From a copy of the sources: an in-tree build would leave build/ and
    # *.egg-info in a working tree other people are editing.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "src" / "smartflow", source / "src" / "smartflow", ignore=ignore)
    shutil.copytree(REPO / "workers", source / "workers", ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", source / "pyproject.toml")
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", dist, source, cwd=tmp_path)
    (wheel,) = dist.glob("smartflow-*.whl")
    return wheel


def _make_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "--quiet", wheel, cwd=tmp_path)
    site_packages = Path(_run(
        python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path,
    ).strip())
    (site_packages / "smartflow-test-dependencies.pth").write_text(
        _this_venvs_site_packages() + "\n"
    )
    return venv


def test_the_wheel_ships_workers_and_data_and_its_console_script_serves_mock_gpt(
    tmp_path: Path,
) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"workers/__init__.py", "workers/gateway.py", "smartflow/data/prices.toml",
            "smartflow/process/arbiter.py"} <= names

    venv = _make_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(
        venv / "bin" / "python", "-c",
        "import smartflow, workers.gateway, setproctitle; "
        "from importlib.resources import files; "
        "print(smartflow.__file__); print(workers.gateway.__file__); "
        "print((files('smartflow') / 'data' / 'prices.toml').is_file())",
        cwd=elsewhere,
    ).splitlines()
    assert all(Path(path).is_relative_to(venv) for path in where[:2]), where
    assert where[2] == "True"

    port = free_port()
    process = subprocess.Popen(
        [str(venv / "bin" / "smartflow"), "serve", "--port", str(port), "--workers", "1",
         "--data-dir", str(tmp_path / "data")],
        cwd=elsewhere, env=_clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while http_get_status(port, "/health/ready", timeout_s=0.5) != 200:
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "not ready within 30 s"
            time.sleep(0.05)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "mock-gpt", "messages": [{"role": "user", "content": "hello wheel"}]},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        answer = response.json()["choices"][0]["message"]["content"]
        assert answer.startswith("Mock response to: hello wheel")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            exit_status = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        stderr = process.stderr.read().decode() if process.stderr else ""
    assert exit_status == 0, stderr
    assert "Traceback" not in stderr
