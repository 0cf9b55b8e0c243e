"""The real Claude Code CLI (`claude -p`) through a real gateway process.

Each prompt is run three ways against a recording Anthropic upstream:
directly (the baseline: what the CLI itself sends), through the gateway's
passthrough (ANTHROPIC_BASE_URL=<gateway>/anthropic) and through its native
POST /v1/messages (ANTHROPIC_BASE_URL=<gateway>). What reaches the upstream
through the gateway must be what the CLI sent directly, bar the key the
gateway swaps in: one streaming POST /v1/messages?beta=true per prompt, the
same two dozen tools, the same `system` placement (a top-level list, and for
the default model a `system` message inside `messages`), and the same
anthropic-beta / anthropic-version / x-app / user-agent bytes.

The CLI (@anthropic-ai/claude-code, pinned; see docs/claude-code.md) is
installed on first use by scripts/install_claude_code.sh into the gitignored
.cache/claude-code. Skipped only when node or npm is missing.

Run:  .venv/bin/python -m pytest tests/test_claude_code.py -q
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness.gateway import GatewayProcess
from upstreams.recording_anthropic import RequestLog, SeenRequest, build_recording_anthropic
from upstreams.recording_openai import build_recording_openai
from upstreams.server import UpstreamThread

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_claude_code.sh"
INSTALL_TIMEOUT_S = 600.0  # a cold CI runner downloads about 235 MB
CLI_TIMEOUT_S = 90.0
REPLY = "Hello from the recording upstream."
PROMPT = "say hi"
CLIENT_KEY = "sk-ant-client"
GATEWAY_KEY = "sk-ant-gateway"
# The CLI's own request headers a gateway must pass through untouched.
COMPARED_HEADERS = ("anthropic-beta", "anthropic-version", "x-app", "user-agent")
# Headers a proxy legitimately rewrites (hop-by-hop, framing, host, the key).
REWRITABLE_HEADERS = frozenset({
    "host", "connection", "keep-alive", "content-length", "transfer-encoding",
    "accept-encoding", "x-api-key", "authorization",
})
# The CLI's default model (None) and a long-context one, as a user passes it.
MODELS: dict[str, str | None] = {"default-model": None, "1m-model": "claude-sonnet-4-5[1m]"}

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                       reason="the Claude Code CLI needs node and npm"),
    pytest.mark.timeout(INSTALL_TIMEOUT_S + 300),
]


@dataclass(frozen=True, slots=True)
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    requests: tuple[SeenRequest, ...]  # what the upstream saw during this run

    def posts(self) -> list[SeenRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    def others(self) -> list[str]:
        """Everything the upstream saw that is neither a HEAD probe nor a prompt."""
        return [f"{r.method} {r.target}" for r in self.requests
                if r.method != "HEAD" and not (r.method == "POST" and r.path == "/v1/messages")]

    def prompt(self) -> SeenRequest:
        posts = self.posts()
        assert len(posts) == 1, (
            f"expected one POST /v1/messages for one prompt, upstream saw "
            f"{[f'{r.method} {r.target}' for r in self.requests]}")
        return posts[0]

    def describe(self) -> str:
        return (f"exit {self.returncode}\nstdout: {self.stdout[-1000:]!r}\n"
                f"stderr: {self.stderr[-2000:]!r}\n"
                f"upstream saw: {[f'{r.method} {r.target}' for r in self.requests]}")


@pytest.fixture(scope="module")
def claude_bin() -> str:
    """The CLI, installed by the project's script if it is not there yet."""
    try:
        done = subprocess.run([str(INSTALL_SCRIPT)], check=False, cwd=REPO_ROOT,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{INSTALL_SCRIPT.name} did not finish within {INSTALL_TIMEOUT_S:.0f} s")
    assert done.returncode == 0, f"{INSTALL_SCRIPT.name} failed:\n{done.stderr[-3000:]}"
    path = done.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), f"{INSTALL_SCRIPT.name} printed {path!r}, which is no file"
    return path


def cli_environment(home: Path, base_url: str) -> dict[str, str]:
    """Only what the CLI needs: nothing from the developer's shell (their
    ANTHROPIC_* settings, proxies, a real ~/.claude) may leak into a run."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": CLIENT_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
    }


def run_claude(claude: str, home: Path, base_url: str, model: str | None,
               log: RequestLog) -> CliRun:
    home.mkdir(parents=True, exist_ok=True)
    seen_before = len(log.requests)
    argv = [claude, "-p", PROMPT] + (["--model", model] if model else [])
    process = subprocess.Popen(argv, cwd=home, env=cli_environment(home, base_url),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: only the CLI's processes
        stdout, stderr = process.communicate()
        pytest.fail(f"claude -p did not finish within {CLI_TIMEOUT_S:.0f} s against "
                    f"{base_url}; upstream saw {log.summary()[seen_before:]}\n"
                    f"stderr: {stderr.decode(errors='replace')[-2000:]}")
    return CliRun(process.returncode, stdout.decode(errors="replace"),
                  stderr.decode(errors="replace"), tuple(log.requests[seen_before:]))


def system_placement(body: dict[str, Any]) -> dict[str, Any]:
    """Where system text sits, not what it says (that names the run's cwd and date)."""
    system = body.get("system")
    messages = body.get("messages") or []
    return {
        "top_level": (type(system).__name__,
                      [block.get("type") for block in system] if isinstance(system, list) else None),
        "roles": [message.get("role") for message in messages],
    }


def tool_names(body: dict[str, Any]) -> list[str]:
    return [tool.get("name") for tool in body.get("tools") or []]


@pytest.fixture(scope="module")
def baseline(claude_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CliRun]:
    """Each prompt run straight against the recording upstream."""
    log = RequestLog()
    runs: dict[str, CliRun] = {}
    with UpstreamThread(build_recording_anthropic(log, REPLY)) as upstream:
        for label, model in MODELS.items():
            home = tmp_path_factory.mktemp(f"claude-home-direct-{label}")
            runs[label] = run_claude(claude_bin, home, upstream.url, model, log)
    return runs


@pytest.fixture
def upstream() -> Iterator[tuple[UpstreamThread, RequestLog]]:
    log = RequestLog()
    with UpstreamThread(build_recording_anthropic(log, REPLY)) as server:
        yield server, log


def gateway_config(upstream_url: str) -> dict[str, object]:
    def model(name: str) -> dict[str, object]:
        return {"name": name, "provider": "anthropic", "model": name,
                "api_base": upstream_url, "api_key": GATEWAY_KEY}

    # The CLI's default model is left to the claude-* prefix rule, which
    # borrows api_base and api_key from the first anthropic model.
    return {"server": {"access_log": False}, "models": [model("claude-sonnet-4-5")]}


@pytest.mark.parametrize("label", list(MODELS))
def test_claude_code_run_directly_sends_one_streaming_prompt_with_its_tools_and_betas(
        baseline: dict[str, CliRun], label: str) -> None:
    run = baseline[label]
    assert run.returncode == 0, run.describe()
    assert REPLY in run.stdout, run.describe()
    prompt = run.prompt()
    assert prompt.query_string == "beta=true"
    assert prompt.json["stream"] is True
    assert len(prompt.json["tools"]) >= 15, "Claude Code offers about two dozen tools"
    assert isinstance(prompt.json["system"], list)
    assert "[1m]" not in prompt.json["model"]
    assert prompt.header("x-api-key") == CLIENT_KEY
    assert "claude-code-" in (prompt.header("anthropic-beta") or "")
    assert "context-1m-" in (prompt.header("anthropic-beta") or "")
    if label == "default-model":
        # what makes the system placement comparison below worth having
        assert "system" in system_placement(prompt.json)["roles"]
    assert run.others() == [], run.describe()


@pytest.mark.parametrize("label", list(MODELS))
@pytest.mark.parametrize("route", ["passthrough", "native"])
def test_claude_code_through_the_gateway_reaches_the_upstream_as_it_would_directly(
        claude_bin: str, baseline: dict[str, CliRun],
        gateway_factory: Callable[..., GatewayProcess],
        upstream: tuple[UpstreamThread, RequestLog], tmp_path: Path,
        route: str, label: str) -> None:
    server, log = upstream
    gateway = gateway_factory(gateway_config(server.url), workers=1)
    base_url = gateway.url + ("/anthropic" if route == "passthrough" else "")

    run = run_claude(claude_bin, tmp_path / "home", base_url, MODELS[label], log)
    direct = baseline[label].prompt()

    assert run.returncode == 0, run.describe() + "\ngateway:\n" + gateway.output_tail()
    assert REPLY in run.stdout, run.describe()
    # One prompt, one upstream call; the HEAD probe may be answered by the
    # gateway itself or reach the upstream, nothing else may.
    prompt = run.prompt()
    assert run.others() == [], run.describe()
    assert prompt.query_string == direct.query_string == "beta=true"

    body, direct_body = prompt.json, direct.json
    assert isinstance(body, dict), f"upstream got a body that is not JSON: {prompt.body[:200]!r}"
    assert body["stream"] is True
    assert body["model"] == direct_body["model"]
    assert "[1m]" not in body["model"]
    assert sorted(body) == sorted(direct_body)
    assert tool_names(body) == tool_names(direct_body)
    assert system_placement(body) == system_placement(direct_body)

    assert {name: prompt.header(name) for name in COMPARED_HEADERS} == {
        name: direct.header(name) for name in COMPARED_HEADERS}
    direct_names = {name for name, _ in direct.header_lines} - REWRITABLE_HEADERS
    forwarded_names = {name for name, _ in prompt.header_lines}
    assert sorted(direct_names - forwarded_names) == [], "client headers dropped on the way"

    # The gateway's key replaces the caller's, which never goes upstream.
    assert prompt.header_values("x-api-key") == [GATEWAY_KEY]
    assert prompt.header("authorization") is None
    assert all(CLIENT_KEY not in value for _, value in prompt.header_lines)


@pytest.mark.parametrize("route", ["passthrough", "native"])
def test_claude_code_keyed_with_the_gateways_master_key_gets_in_and_that_key_stays_home(
        claude_bin: str, gateway_factory: Callable[..., GatewayProcess],
        upstream: tuple[UpstreamThread, RequestLog], tmp_path: Path, route: str) -> None:
    server, log = upstream
    config = gateway_config(server.url)
    config["auth"] = {"master_key": CLIENT_KEY}  # the key users give Claude Code
    gateway = gateway_factory(config, workers=1)
    base_url = gateway.url + ("/anthropic" if route == "passthrough" else "")

    run = run_claude(claude_bin, tmp_path / "home", base_url, None, log)

    assert run.returncode == 0, run.describe() + "\ngateway:\n" + gateway.output_tail()
    assert REPLY in run.stdout, run.describe()
    prompt = run.prompt()
    assert prompt.header_values("x-api-key") == [GATEWAY_KEY]
    assert all(CLIENT_KEY not in value for _, value in prompt.header_lines)


OPENAI_WIRE_MODEL = "team-gpt"


def test_claude_code_through_anthropic_on_an_openai_wire_model_gets_its_answer(
        claude_bin: str, gateway_factory: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    """ANTHROPIC_BASE_URL=<gateway>/anthropic with a catalog model served over
    OpenAI's wire: the gateway translates, instead of sending the name to Anthropic."""
    anthropic_log, openai_log = RequestLog(), RequestLog()
    with UpstreamThread(build_recording_anthropic(anthropic_log, REPLY)) as anthropic_up, \
            UpstreamThread(build_recording_openai(openai_log, REPLY)) as openai_up:
        config = gateway_config(anthropic_up.url)
        config["models"] = [*config["models"],  # type: ignore[list-item]
                            {"name": OPENAI_WIRE_MODEL, "provider": "openai",
                             "model": "gpt-4o-mini", "api_base": openai_up.url + "/v1",
                             "api_key": "sk-openai-gateway"}]
        gateway = gateway_factory(config, workers=1)
        run = run_claude(claude_bin, tmp_path / "home", gateway.url + "/anthropic",
                         OPENAI_WIRE_MODEL, anthropic_log)
        assert run.returncode == 0, run.describe() + "\ngateway:\n" + gateway.output_tail()
        assert REPLY in run.stdout, run.describe()
        # The prompt went to the OpenAI-wire deployment, translated; Anthropic
        # never saw a message for a model it does not serve.
        chats = [r for r in openai_log.requests if r.path == "/v1/chat/completions"]
        assert chats, f"the OpenAI upstream saw {openai_log.summary()}"
        assert all(isinstance(r.json, dict) and r.json["model"] == "gpt-4o-mini" for r in chats)
        assert not [r for r in run.posts()
                    if isinstance(r.json, dict) and r.json.get("model") == OPENAI_WIRE_MODEL]
        assert chats[-1].header("authorization") == "Bearer sk-openai-gateway"
