import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_mlflow_env(monkeypatch):
    """mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI; restore it after each test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")   # registers the undo: the original state comes back
    monkeypatch.delenv("MLFLOW_TRACKING_URI")


@pytest.fixture
def two_threads(monkeypatch):
    """Long single-job tests (pre-training, reproduce, the pipeline) use both cores of the CI machine; the
    default of 1 thread is for tests and servers that run next to other work."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")   # kfp.local subprocesses inherit it
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
    """A loopback HTTP server whose POST answers are ``reply(path, body) -> (status, dict)``; GET -> 404.
    Use as a context manager; ``.url`` is its base URL."""

    def __init__(self, reply):
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, out = reply(self.path, body)
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.send_response(404)
                self.end_headers()

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
