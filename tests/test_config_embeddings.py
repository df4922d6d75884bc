"""Settings (declared once, documented) and fast model-availability checks."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from threatqa.config import Settings, settings_markdown
from threatqa.embeddings import load_embedder, resolve_model
from threatqa.errors import ConfigError, ModelUnavailable

README = Path(__file__).resolve().parents[1] / "README.md"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREATQA_PORT", "9001")
    monkeypatch.setenv("THREATQA_DOCS", "/data/reports")
    settings = Settings.load(port=None)
    assert settings.port == 9001 and settings.docs == Path("/data/reports")
    assert Settings.load(port=7000).port == 7000, "explicit values beat the environment"


def test_invalid_setting_names_value_and_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREATQA_AUTH", "password")
    with pytest.raises(ConfigError, match=r"auth.*'password'"):
        Settings.load()


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    assert settings_markdown() in readme, "README settings table is stale: paste `threatqa settings --markdown`"


def test_unknown_hub_model_is_detected_within_seconds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # loopback port with nothing listening
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="unreachable"):
        resolve_model("acme/embedder", timeout=2)
    assert time.monotonic() - started < 5


def test_offline_flag_and_missing_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="not cached"):
        resolve_model("acme/embedder")
    with pytest.raises(ModelUnavailable, match="does not exist"):
        resolve_model(str(tmp_path / "no-model"))
    (tmp_path / "broken").mkdir()
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        load_embedder(str(tmp_path / "broken"))


def test_local_model_folder_loads_and_normalises(tiny_model: Path) -> None:
    embedder = load_embedder(str(tiny_model))
    vectors = embedder.encode_documents(["cocaine use is rising", "hostile states"])
    assert vectors.shape == (2, embedder.dimension) and vectors.dtype.name == "float32"
    assert abs(float((vectors**2).sum(axis=1).max()) - 1.0) < 1e-5
    assert embedder.encode_query("cocaine").shape == (1, embedder.dimension)


class _Hub(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in for the model hub: knows no model."""

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_hub_that_answers_but_lacks_the_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        with pytest.raises(ModelUnavailable, match="HTTP 404"):
            resolve_model("acme/embedder", timeout=2)
    finally:
        server.shutdown()


def test_hub_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never replies
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    started = time.monotonic()
    try:
        with pytest.raises(ModelUnavailable, match="unreachable"):
            resolve_model("acme/embedder", timeout=1)
    finally:
        silent.close()
    assert time.monotonic() - started < 5


def test_compute_threads_per_question_and_for_builds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model: Path
) -> None:
    import faiss
    import torch

    from threatqa.dense import compute_threads, set_compute_threads
    from threatqa.engine import Engine

    with compute_threads(faiss.omp_get_max_threads()):  # the process is left as it was found
        monkeypatch.setattr("os.cpu_count", lambda: 8)
        assert Settings.load(workers=2).question_threads() == 4
        assert Settings.load(workers=16).question_threads() == 1
        assert Settings.load(workers=2, threads=3).question_threads() == 3

        docs = tmp_path / "docs"
        docs.mkdir()
        (docs / "a.txt").write_text("Organised crime groups launder money through cash businesses.\n", encoding="utf-8")
        settings = Settings.load(docs=docs, index=tmp_path / "index", audit=tmp_path / "a.sqlite3",
                                 model=str(tiny_model), workers=4)  # fmt: skip
        engine = Engine.start(settings, build="missing", log=lambda m: None)
        # 8 cores for 4 workers: 2 threads a question, in PyTorch and in FAISS (which shares its OpenMP)
        assert faiss.omp_get_max_threads() == 2 and torch.get_num_threads() == 2
        with compute_threads(6):  # a build uses every core, then gives them back
            assert faiss.omp_get_max_threads() == 6 and torch.get_num_threads() == 6
        assert faiss.omp_get_max_threads() == 2 and torch.get_num_threads() == 2

        # OpenMP counts are per thread: a question searched on another thread (as a server's are)
        # still runs FAISS with the count set here, not OpenMP's default of every core
        monkeypatch.setattr("threatqa.dense._question_threads", 0)  # restored after the test
        set_compute_threads(3)
        seen: list[int] = []

        def search() -> None:
            engine.index.dense.search(np.zeros((1, engine.index.manifest.dimension), np.float32), 1)
            seen.append(faiss.omp_get_max_threads())

        thread = threading.Thread(target=search)
        thread.start()
        thread.join()
        assert seen == [3]
