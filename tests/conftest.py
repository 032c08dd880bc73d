import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_mlflow_env(monkeypatch):
    """mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI; restore it after each test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")   # registers the undo: the original state comes back
    monkeypatch.delenv("MLFLOW_TRACKING_URI")


@pytest.fixture(scope="session", autouse=True)
def _shared_reference_cache(tmp_path_factory):
    """One content-keyed cache of the reasoner check's reference scores (MiniLM, TF-IDF) for the whole test
    session, shared by the pytest-xdist workers and the processes they start, and never the user's ~/.cache."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    before = os.environ.get("RGALIGN_CACHE_DIR")
    os.environ["RGALIGN_CACHE_DIR"] = str(root / "rgalign-cache")
    yield
    if before is None:
        os.environ.pop("RGALIGN_CACHE_DIR", None)
    else:
        os.environ["RGALIGN_CACHE_DIR"] = before


@pytest.fixture
def two_threads(monkeypatch):
    """Long single-job tests (pre-training, reproduce, the pipeline) use the cores no other test process uses
    (both on the 2-core CI machine when the suite runs in one process, one each under ``pytest -n 2``); the
    default of 1 thread is for tests and servers that run next to other work."""
    import torch
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    n = max(1, min(2, (os.cpu_count() or 1) // workers))
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    monkeypatch.setenv("OMP_NUM_THREADS", str(n))   # kfp.local subprocesses inherit it
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def half_ci_sizes():
    """Half the ci preset's session counts: the slowest end-to-end tests (reproduce, the local pipeline) run every
    step and row on these, in about half the time."""
    from rgalign.config import REPRODUCE_PRESETS
    return {k: REPRODUCE_PRESETS["ci"][k] // 2 for k in ("max_train", "max_val", "max_eval", "n_samples")}


@pytest.fixture(scope="session")
def ci_world(tmp_path_factory):
    """The ci-scale world, generated once per test session."""
    from rgalign.config import WorldConfig
    from rgalign.world.generate import generate_world
    return generate_world(WorldConfig(scale="ci"), tmp_path_factory.mktemp("worlds"), progress=False)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A 300-user world for tests that rewrite sources."""
    from rgalign.config import WorldConfig
    from rgalign.world.generate import generate_world
    return generate_world(WorldConfig(scale="ci", n_users=300), tmp_path_factory.mktemp("small"), progress=False)


def telecom_generator():
    """``examples/telecom/generate.py`` as a module (the second example domain's producer)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "telecom" / "generate.py"
    spec = importlib.util.spec_from_file_location("telecom_generate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def telecom(tmp_path_factory):
    """The telecom example dataset (a second, differently shaped domain), 2,000 subscribers: ~1,500 clicked
    sessions, enough validation days for the gate to see a trained ranker beat the popularity floor."""
    return telecom_generator().generate(tmp_path_factory.mktemp("datasets") / "telecom", users=2000)


MICRO_CTX = ("User Profile: User Gender: Female, Region: Thailand\n"
             "Order Status and Interaction Context: Entry Point: Shipping Page, Current Order Status: TO_RECEIVE")


def build_micro_reasoner(out):
    """A randomly initialised tiny Qwen3 with a tokenizer trained on a few sentences (seconds to build);
    deterministic: the same call gives the same weights."""
    from rgalign.reasoner.sources import CHATML, build_model, save_reasoner, train_tokenizer
    from rgalign.features.prompt import ReasonerPrompt
    texts = [ReasonerPrompt().plain(MICRO_CTX), "Where is my parcel now?", "I want a refund for my order."] * 20
    tok = train_tokenizer(texts, 600)
    tok.chat_template = CHATML
    model = build_model("tiny", len(tok), 0)
    return save_reasoner(model, tok, out, {"source": "test"})


@pytest.fixture(scope="session")
def built_reasoner(ci_world, tmp_path_factory):
    """The main job's raw reasoner on the ci world (its default settings: LM loss + MiniLM distillation,
    checked): what ``rgalign pipeline run`` starts from on a fresh machine, i.e. the base the package ships for
    these settings (``test_workflow.py`` checks that it ships one and that builds are deterministic). Built
    here (~6 min) only when the package ships none."""
    import torch

    from rgalign import workflow
    out = tmp_path_factory.mktemp("built") / "reasoner"
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:   # the build step of the main job: copies the shipped base, pre-trains only when none ships
        workflow.build_reasoner(ci_world, workflow.WorkflowConfig(tracking=False), out)
    finally:
        torch.set_num_threads(before)
    return out


@pytest.fixture(scope="session")
def micro_reasoner(tmp_path_factory):
    return build_micro_reasoner(tmp_path_factory.mktemp("r") / "raw")


class json_server:
    """A loopback HTTP server whose POST answers are ``reply(path, body) -> (status, dict)`` and GET answers
    ``get(path) -> (status, dict)`` (404 without one). Use as a context manager; ``.url`` is its base URL."""

    def __init__(self, reply, get=None):
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status, out):
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                self._send(*reply(self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))

            def do_GET(self):
                if get is None:
                    self.send_response(404)
                    self.end_headers()
                else:
                    self._send(*get(self.path))

            def log_message(self, *a):
                pass
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def __enter__(self):
        import threading
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *a):
        self.srv.shutdown()


def chat_reply(text: str) -> dict:
    """An OpenAI chat-completions response body."""
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], port: int, log, timeout_s: float = 180):
    """Start a server subprocess (``cmd``, output to ``log``) and wait until ``/v2/health/ready`` on
    ``port`` answers 200; returns ``(process, base URL)`` or fails the test with the log's tail."""
    import subprocess
    import time
    from pathlib import Path

    import httpx
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{Path(log).read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"server not ready in {timeout_s:.0f} s:\n{Path(log).read_text()[-3000:]}")


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STRAYS = ("mlflow.db", "mlruns")   # MLflow's defaults in the current directory: a call that missed its store


def pytest_sessionstart(session):
    session.config._strays_before = {s for s in _STRAYS if os.path.exists(os.path.join(_REPO, s))}


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a test wrote MLflow's default store into the checkout (a tracking URI not passed on)."""
    new = {s for s in _STRAYS if os.path.exists(os.path.join(_REPO, s))} - session.config._strays_before
    if new and not hasattr(session.config, "workerinput"):
        print(f"\nERROR: the tests created {sorted(new)} in {_REPO}: some MLflow call used the default store")
        session.exitstatus = 1
