"""Real, unchanged clients through a real gateway process, on both wires.

Each client runs in its non-interactive mode against one gateway (started
once for the module) whose catalog has two models:

  team-gpt     provider openai    -> the recording OpenAI upstream (gpt-4o-mini)
  team-claude  provider anthropic -> the recording Anthropic upstream (claude-sonnet-4-5)

and every run must print (or return) the upstream's reply text, with
exactly one upstream call made for the one prompt, on the path the route
implies: the Responses API relayed natively (OpenAI-wire: POST /v1/responses)
or translated (Anthropic-wire: POST /v1/messages), chat completions to
/v1/chat/completions or /v1/messages, Gemini's generateContent translated to
either. The upstream must see the deployment's model name and the gateway's
key, never the client's.

Clients (pinned; installed on first use by scripts/install_clients.sh into
the gitignored .cache/clients, npm packages and a Python venv of their own;
Claude Code by scripts/install_claude_code.sh into .cache/claude-code):

  Codex CLI       `codex exec`, CODEX_HOME=<scratch> holding config.toml with
                  [model_providers.smartflow] base_url=<gateway>/v1,
                  wire_api="responses", env_key; --strict-config so a key
                  this version does not know fails the run.
  Agents SDK      Runner.run_sync with the default (Responses) model, and
                  with OpenAIChatCompletionsModel; OPENAI_BASE_URL=<gateway>/v1.
  Gemini CLI      `gemini -p ... -m <model> --skip-trust`, HOME=<scratch>
                  with .gemini/settings.json (security.auth.selectedType
                  "gemini-api-key"), GOOGLE_GEMINI_BASE_URL=<gateway>,
                  GEMINI_API_KEY.
  llm             `llm -m ... --no-log`, LLM_USER_PATH=<scratch> holding
                  extra-openai-models.yaml (api_base <gateway>/v1) and keys.json.
  langchain       ChatOpenAI(base_url=<gateway>/v1).invoke(...).
  Claude Code     only its OpenAI-wire model through the native /v1/messages:
                  tests/test_claude_code.py already covers the Anthropic wire
                  (one POST per prompt, native and passthrough) and the
                  OpenAI wire through /anthropic.

Side traffic switched off (checked with `strace -e connect,sendto`: with
these settings no client resolves or connects to anything but loopback):

  Codex CLI    [analytics] enabled=false, [feedback] enabled=false,
               [otel] exporter="none", check_for_update_on_startup=false,
               [history] persistence="none", --ephemeral, and
               [features] plugins=false (without it the CLI looks up
               github.com, api.github.com and chatgpt.com for its plugin
               marketplace).
  Gemini CLI   privacy.usageStatisticsEnabled=false (else Clearcut usage
               logging to play.googleapis.com), telemetry.enabled=false,
               general.enableAutoUpdate/-Notification=false, ide.enabled=false.
               Extra model calls: an explicit `-m` skips model routing (the
               default "auto" model first asks a classifier model, observed
               as five generateContent calls to gemini-3.5-flash-lite before
               the prompt); model.skipNextSpeakerCheck=true and
               model.disableLoopDetection=true keep the next-speaker and
               LLM loop checks from adding calls. One prompt, one call.
  Agents SDK   set_tracing_disabled(True) and OPENAI_AGENTS_DISABLE_TRACING=1
               (traces would go to api.openai.com).
  langchain    LANGSMITH_TRACING=false, LANGCHAIN_TRACING_V2=false.
  llm          LLM_LOAD_PLUGINS="" (no plugins), --no-log; it has no telemetry.
  Claude Code  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1, DISABLE_AUTOUPDATER=1,
               DISABLE_TELEMETRY=1 (as in test_claude_code.py).

Every client gets an environment built from scratch (PATH, HOME, LANG and
its own settings): nothing from the developer's shell leaks in. Skipped only
when node or npm is missing; an install that fails fails the tests.

Run:  .venv/bin/python -m pytest tests/test_clients_e2e.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.gateway import GatewayProcess
from upstreams.recording_anthropic import RequestLog, SeenRequest, build_recording_anthropic
from upstreams.recording_openai import build_recording_openai
from upstreams.server import UpstreamThread

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_CLIENTS = REPO_ROOT / "scripts" / "install_clients.sh"
INSTALL_CLAUDE_CODE = REPO_ROOT / "scripts" / "install_claude_code.sh"
INSTALL_TIMEOUT_S = 600.0  # a cold CI runner downloads a few hundred MB
CLI_TIMEOUT_S = 90.0
REPLY = "Hello from the recording upstream."
PROMPT = "say hi"
CLIENT_KEY = "sk-client-e2e"
OPENAI_GATEWAY_KEY = "sk-openai-gateway"
ANTHROPIC_GATEWAY_KEY = "sk-ant-gateway"


@dataclass(frozen=True, slots=True)
class Wire:
    model: str  # the gateway's catalog name, what the client asks for
    deployment: str  # what the upstream must see
    upstream: str  # "openai" or "anthropic"


WIRES = {
    "openai-wire": Wire("team-gpt", "gpt-4o-mini", "openai"),
    "anthropic-wire": Wire("team-claude", "claude-sonnet-4-5", "anthropic"),
}

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                       reason="the Codex, Gemini and Claude Code CLIs need node and npm"),
    pytest.mark.timeout(2 * INSTALL_TIMEOUT_S + 300),
]


# -- installs ---------------------------------------------------------------------------

def _install(script: Path) -> str:
    try:
        done = subprocess.run([str(script)], check=False, cwd=REPO_ROOT,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{script.name} did not finish within {INSTALL_TIMEOUT_S:.0f} s")
    assert done.returncode == 0, f"{script.name} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def clients() -> dict[str, str]:
    """name -> path (codex, gemini, python, llm), installed if not there yet."""
    paths: dict[str, str] = {}
    for line in _install(INSTALL_CLIENTS).splitlines():
        name, _, path = line.partition(" ")
        paths[name] = path
    assert sorted(paths) == ["codex", "gemini", "llm", "python"], paths
    for name, path in paths.items():
        assert Path(path).is_file(), f"{INSTALL_CLIENTS.name} printed {name} {path!r}, no file"
    return paths


@pytest.fixture(scope="module")
def claude_bin() -> str:
    path = _install(INSTALL_CLAUDE_CODE).strip().splitlines()[-1]
    assert Path(path).is_file(), f"{INSTALL_CLAUDE_CODE.name} printed {path!r}, which is no file"
    return path


# -- one gateway and two recording upstreams for the module --------------------------------

@dataclass
class Stack:
    gateway: GatewayProcess
    logs: dict[str, RequestLog]  # "openai" / "anthropic" -> what that upstream saw

    def mark(self) -> dict[str, int]:
        return {name: len(log.requests) for name, log in self.logs.items()}

    def since(self, mark: Mapping[str, int]) -> dict[str, list[SeenRequest]]:
        return {name: log.requests[mark[name]:] for name, log in self.logs.items()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = {"openai": RequestLog(), "anthropic": RequestLog()}
    with UpstreamThread(build_recording_openai(logs["openai"], REPLY)) as openai_up, \
            UpstreamThread(build_recording_anthropic(logs["anthropic"], REPLY)) as anthropic_up:
        config = {
            "server": {"access_log": False},
            "models": [
                {"name": WIRES["openai-wire"].model, "provider": "openai",
                 "model": WIRES["openai-wire"].deployment,
                 "api_base": openai_up.url + "/v1", "api_key": OPENAI_GATEWAY_KEY},
                {"name": WIRES["anthropic-wire"].model, "provider": "anthropic",
                 "model": WIRES["anthropic-wire"].deployment,
                 "api_base": anthropic_up.url, "api_key": ANTHROPIC_GATEWAY_KEY},
            ],
        }
        gateway = GatewayProcess(config, workers=1,
                                 directory=tmp_path_factory.mktemp("clients-gateway"))
        try:
            gateway.start()
            yield Stack(gateway, logs)
        finally:
            gateway.close()


# -- running a client ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClientRun:
    label: str
    returncode: int
    stdout: str
    stderr: str
    seen: dict[str, list[SeenRequest]]  # per upstream, during this run
    gateway_tail: str

    def calls(self) -> list[tuple[str, SeenRequest]]:
        """Model calls that reached an upstream. A HEAD is a reachability
        probe (Claude Code sends one), not a call."""
        return [(name, r) for name, requests in self.seen.items()
                for r in requests if r.method != "HEAD"]

    def describe(self) -> str:
        seen = {name: [f"{r.method} {r.target}" for r in requests]
                for name, requests in self.seen.items()}
        return (f"{self.label}: exit {self.returncode}\nstdout: {self.stdout[-1500:]!r}\n"
                f"stderr: {self.stderr[-2500:]!r}\nupstreams saw: {seen}\n"
                f"gateway:\n{self.gateway_tail}")


def base_environment(home: Path) -> dict[str, str]:
    """Only what a client needs: nothing from the developer's shell (keys,
    base URLs, proxies, a real ~/.codex or ~/.gemini) may leak into a run."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "LANG": "C.UTF-8", "NO_COLOR": "1"}


def run_client(stack: Stack, label: str, argv: Sequence[str], env: Mapping[str, str],
               cwd: Path) -> ClientRun:
    cwd.mkdir(parents=True, exist_ok=True)
    mark = stack.mark()
    process = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: only the client's processes
        stdout, stderr = process.communicate()
        pytest.fail(f"{label} did not finish within {CLI_TIMEOUT_S:.0f} s; upstreams saw "
                    f"{ {n: [r.target for r in rs] for n, rs in stack.since(mark).items()} }\n"
                    f"stderr: {stderr.decode(errors='replace')[-2000:]}")
    return ClientRun(label, process.returncode, stdout.decode(errors="replace"),
                     stderr.decode(errors="replace"), stack.since(mark),
                     stack.gateway.output_tail(40))


def assert_one_call(run: ClientRun, wire: Wire, openai_path: str, *,
                    stream: bool) -> SeenRequest:
    """The reply came back, and one call reached the wire's upstream, on the
    expected path, streamed or not as the client asked, with the
    deployment's model and the gateway's key."""
    assert run.returncode == 0, run.describe()
    assert REPLY in run.stdout, run.describe()
    calls = run.calls()
    assert len(calls) == 1, "one prompt, one upstream call\n" + run.describe()
    upstream, request = calls[0]
    expected_path = openai_path if wire.upstream == "openai" else "/v1/messages"
    assert (upstream, request.method, request.path) == (wire.upstream, "POST", expected_path), \
        run.describe()
    assert isinstance(request.json, dict), f"not a JSON body: {request.body[:200]!r}"
    assert request.json.get("model") == wire.deployment, run.describe()
    assert bool(request.json.get("stream")) is stream, run.describe()
    if wire.upstream == "openai":
        assert request.header_values("authorization") == [f"Bearer {OPENAI_GATEWAY_KEY}"]
    else:
        assert request.header_values("x-api-key") == [ANTHROPIC_GATEWAY_KEY]
    assert all(CLIENT_KEY not in value for _, value in request.header_lines)
    return request


wires = pytest.mark.parametrize("wire", [pytest.param(w, id=i) for i, w in WIRES.items()])


# -- Codex CLI ---------------------------------------------------------------------------

def codex_config(gateway_url: str, model: str) -> str:
    return f"""\
model = "{model}"
model_provider = "smartflow"
approval_policy = "never"
sandbox_mode = "read-only"
check_for_update_on_startup = false

[model_providers.smartflow]
name = "Smartflow"
base_url = "{gateway_url}/v1"
wire_api = "responses"
env_key = "SMARTFLOW_API_KEY"

[features]
plugins = false

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"

[history]
persistence = "none"
"""


@wires
def test_codex_exec_answers_through_the_responses_route(
        clients: dict[str, str], stack: Stack, tmp_path: Path, wire: Wire) -> None:
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(codex_config(stack.gateway.url, wire.model))
    env = base_environment(tmp_path) | {"CODEX_HOME": str(codex_home),
                                        "SMARTFLOW_API_KEY": CLIENT_KEY}
    argv = [clients["codex"], "exec", "--strict-config", "--skip-git-repo-check",
            "--ephemeral", "--color", "never", PROMPT]
    run = run_client(stack, "codex exec", argv, env, tmp_path / "work")
    request = assert_one_call(run, wire, "/v1/responses", stream=True)
    if wire.upstream == "openai":
        # Relayed natively: the Responses body as Codex wrote it.
        assert "input" in request.json and "messages" not in request.json
        assert (request.header("user-agent") or "").startswith("codex_exec/")


# -- OpenAI Agents SDK ------------------------------------------------------------------

AGENTS_SCRIPT = """\
import sys
from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from openai import AsyncOpenAI

set_tracing_disabled(True)
api, model = sys.argv[1], sys.argv[2]
if api == "chat":
    model = OpenAIChatCompletionsModel(model=model, openai_client=AsyncOpenAI())
agent = Agent(name="smartflow-e2e", instructions="Answer briefly.", model=model)
result = Runner.run_sync(agent, sys.argv[3])
print(result.final_output)
"""


def python_client_environment(home: Path, gateway_url: str) -> dict[str, str]:
    return base_environment(home) | {
        "OPENAI_BASE_URL": gateway_url + "/v1",
        "OPENAI_API_KEY": CLIENT_KEY,
        "OPENAI_AGENTS_DISABLE_TRACING": "1",
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "false",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@wires
@pytest.mark.parametrize(("api", "openai_path"), [("responses", "/v1/responses"),
                                                  ("chat", "/v1/chat/completions")])
def test_openai_agents_sdk_run_sync_answers(
        clients: dict[str, str], stack: Stack, tmp_path: Path, wire: Wire,
        api: str, openai_path: str) -> None:
    script = tmp_path / "agents_run.py"
    script.write_text(AGENTS_SCRIPT)
    argv = [clients["python"], str(script), api, wire.model, PROMPT]
    run = run_client(stack, f"agents {api}", argv,
                     python_client_environment(tmp_path, stack.gateway.url), tmp_path)
    assert_one_call(run, wire, openai_path, stream=False)  # run_sync does not stream


# -- Gemini CLI --------------------------------------------------------------------------

GEMINI_SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "model": {"skipNextSpeakerCheck": True, "disableLoopDetection": True},
    "ide": {"enabled": False},
}


@wires
def test_gemini_cli_prompt_answers_through_the_gemini_route(
        clients: dict[str, str], stack: Stack, tmp_path: Path, wire: Wire) -> None:
    settings_dir = tmp_path / ".gemini"
    settings_dir.mkdir()
    (settings_dir / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
    env = base_environment(tmp_path) | {"GOOGLE_GEMINI_BASE_URL": stack.gateway.url,
                                        "GEMINI_API_KEY": CLIENT_KEY}
    argv = [clients["gemini"], "--skip-trust", "-p", PROMPT, "-m", wire.model]
    run = run_client(stack, "gemini -p", argv, env, tmp_path / "work")
    # The CLI asks for :streamGenerateContent?alt=sse; the gateway streams upstream too.
    assert_one_call(run, wire, "/v1/chat/completions", stream=True)


# -- llm ----------------------------------------------------------------------------------

@wires
def test_llm_cli_answers_through_chat_completions(
        clients: dict[str, str], stack: Stack, tmp_path: Path, wire: Wire) -> None:
    user_path = tmp_path / "llm"
    user_path.mkdir()
    (user_path / "extra-openai-models.yaml").write_text(
        f"- model_id: smartflow-{wire.model}\n"
        f"  model_name: {wire.model}\n"
        f"  api_base: \"{stack.gateway.url}/v1\"\n"
        f"  api_key_name: smartflow\n")
    (user_path / "keys.json").write_text(json.dumps({"smartflow": CLIENT_KEY}))
    env = base_environment(tmp_path) | {"LLM_USER_PATH": str(user_path), "LLM_LOAD_PLUGINS": ""}
    argv = [clients["llm"], "-m", f"smartflow-{wire.model}", "--no-log", PROMPT]
    run = run_client(stack, "llm", argv, env, tmp_path)
    assert_one_call(run, wire, "/v1/chat/completions", stream=True)  # llm streams by default


# -- langchain-openai ---------------------------------------------------------------------

LANGCHAIN_SCRIPT = """\
import os, sys
from langchain_openai import ChatOpenAI

chat = ChatOpenAI(model=sys.argv[1], base_url=os.environ["OPENAI_BASE_URL"],
                  api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
print(chat.invoke(sys.argv[2]).content)
"""


@wires
def test_langchain_openai_invoke_answers(
        clients: dict[str, str], stack: Stack, tmp_path: Path, wire: Wire) -> None:
    script = tmp_path / "langchain_run.py"
    script.write_text(LANGCHAIN_SCRIPT)
    argv = [clients["python"], str(script), wire.model, PROMPT]
    run = run_client(stack, "langchain", argv,
                     python_client_environment(tmp_path, stack.gateway.url), tmp_path)
    assert_one_call(run, wire, "/v1/chat/completions", stream=False)


# -- Claude Code on the OpenAI wire, native /v1/messages ----------------------------------

def test_claude_code_native_messages_on_an_openai_wire_model_makes_one_call(
        claude_bin: str, stack: Stack, tmp_path: Path) -> None:
    """ANTHROPIC_BASE_URL=<gateway> (the native POST /v1/messages, not the
    /anthropic passthrough test_claude_code.py drives) with a model served
    over OpenAI's wire: translated, one chat completion upstream."""
    env = base_environment(tmp_path) | {
        "ANTHROPIC_BASE_URL": stack.gateway.url,
        "ANTHROPIC_API_KEY": CLIENT_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
    }
    argv = [claude_bin, "-p", PROMPT, "--model", WIRES["openai-wire"].model]
    run = run_client(stack, "claude -p", argv, env, tmp_path / "work")
    assert_one_call(run, WIRES["openai-wire"], "/v1/chat/completions", stream=True)
