"""The `smartflow` command line, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.gateway import GatewayProcess, http_get_status
from harness.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SMARTFLOW_BIN = Path(sys.executable).with_name("smartflow")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smartflow.cli", *args], cwd=cwd, env=env or clean_env(),
        check=False, capture_output=True, text=True, timeout=timeout_s,
    )


def test_check_config_prints_ok_and_a_summary_for_the_repository_config(tmp_path: Path) -> None:
    result = run_cli("check-config", str(REPO / "config.toml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ok"
    assert "listen: 127.0.0.1:8080" in lines
    assert any(line.startswith("models: 1 deployment(s)") and "mock-gpt" in line for line in lines)


def test_check_config_without_a_file_uses_config_toml_in_the_current_dir(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[server]\nport = 9123\n")
    result = run_cli("check-config", cwd=tmp_path)
    assert result.returncode == 0
    assert "listen: 127.0.0.1:9123" in result.stdout


def test_check_config_reports_the_key_path_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = "eighty"\n')
    result = run_cli("check-config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "server.port: expected int, got str" in result.stderr
    assert "Traceback" not in result.stderr and "ok" not in result.stdout


def test_serve_refuses_a_bad_config_with_exit_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[supervisor]\ncrash_loop_restarts = true\n")
    result = run_cli("serve", "--config", str(bad), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2
    assert "supervisor.crash_loop_restarts: expected int, got bool" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_bad_environment_override_with_exit_status_2(tmp_path: Path) -> None:
    result = run_cli("serve", "--port", str(free_port()), cwd=tmp_path,
                     env=clean_env(SMARTFLOW_SERVER__WORKERS="many"))
    assert result.returncode == 2
    assert "server.workers: expected int, got str" in result.stderr


def test_a_flag_beats_the_environment_which_beats_the_file(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    env_port, file_port = free_port(), free_port()
    gateway = gateway_factory(
        {"server": {"port": file_port, "keepalive_timeout": 7.0}},
        env={"SMARTFLOW_SERVER__PORT": str(env_port)},
    )  # the harness passes --port
    assert http_get_status(gateway.port, "/health") == 200
    assert http_get_status(env_port, "/health", timeout_s=0.3) is None
    assert http_get_status(file_port, "/health", timeout_s=0.3) is None


def test_the_console_script_and_the_module_agree(tmp_path: Path) -> None:
    assert SMARTFLOW_BIN.exists(), "pip install -e . creates the smartflow script"
    result = subprocess.run([str(SMARTFLOW_BIN), "--version"], check=False, capture_output=True, text=True,
                            timeout=30, env=clean_env())
    assert result.returncode == 0 and result.stdout.startswith("smartflow ")
    assert run_cli("--version", cwd=tmp_path).stdout == result.stdout


def test_an_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("launch", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_importing_smartflow_and_its_cli_stays_light(tmp_path: Path) -> None:
    # The CLI must not pull in the server stack before the supervisor needs it.
    # Import cost is measured in CPU seconds: wall time would count whatever
    # else the machine is busy with.
    code = (
        "import sys, time; t = time.process_time(); import smartflow.cli; "
        "print(time.process_time() - t); "
        "print(sorted(m for m in ('uvloop', 'redis', 'prometheus_client', 'h2', 'h11', "
        "'smartflow.http', 'asyncio') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=30, cwd=tmp_path)
    _seconds, heavy = result.stdout.splitlines()
    assert heavy == "[]"
    bare = subprocess.run([sys.executable, "-c", code.replace("smartflow.cli", "smartflow")],
                          check=False, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert float(bare.stdout.splitlines()[0]) < 0.15  # `import smartflow`: under 150 ms of CPU


def test_serve_with_defaults_answers_ready_with_the_embedded_redis(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "smartflow.cli", "serve", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        while http_get_status(port, "/health/ready", timeout_s=0.5) != 200:
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() - started < 20, "not ready within 20 s"
            time.sleep(0.01)
        cold_start_s = time.monotonic() - started
        assert (tmp_path / ".smartflow" / "appendonlydir").is_dir()  # default data dir, AOF on
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
    print(f"cold start to /health/ready: {cold_start_s * 1000:.0f} ms")
    assert not (tmp_path / ".smartflow" / "redis.sock").exists()


@pytest.mark.parametrize("bad_flag", [["--port", "http"], ["--workers", "two"]])
def test_serve_rejects_malformed_flags(tmp_path: Path, bad_flag: list[str]) -> None:
    result = run_cli("serve", *bad_flag, cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid int value" in result.stderr


def test_serve_without_a_redis_server_binary_says_so_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[state]\nredis_server_bin = "no-such-redis-server"\n')
    result = run_cli("serve", "--config", str(config), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 1
    assert "state.redis_server_bin: 'no-such-redis-server' not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_an_unloadable_tls_certificate_exits_2_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\ntls_cert_file = "{tmp_path / "cert.pem"}"\n'
        f'tls_key_file = "{tmp_path / "key.pem"}"\n'
    )
    result = run_cli("serve", "--config", str(config), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2
    assert "server.tls_cert_file: cannot load the certificate and key" in result.stderr
    assert "Traceback" not in result.stderr
