"""Stage 3: text -> normalised vectors with sentence-transformers (and the optional re-ranker).

Loading a hub model that is neither cached nor reachable makes the libraries retry for about a
minute. We decide within `hub_timeout` seconds instead: a local folder or a cached snapshot is
loaded with no network at all; otherwise one short probe of the hub decides whether to download
or to fall back to lexical mode (`ModelUnavailable`).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from threatqa.errors import ModelUnavailable

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder, SentenceTransformer

# No telemetry from the hub client, whatever the user's environment says.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

HOW_TO_PROVIDE = (
    "to use dense retrieval, download the model where the hub is reachable (it is then cached), "
    "or set THREATQA_MODEL to a local sentence-transformers folder"
)


@dataclass(frozen=True)
class ModelSource:
    """Where a model will be loaded from: a local folder, or the hub (network needed)."""

    name: str
    location: str
    local: bool


def resolve_model(name: str, timeout: float = 3.0) -> ModelSource:
    """Find `name` locally (folder or cache) or check quickly that the hub can serve it."""
    if not name:
        raise ModelUnavailable("no model configured (THREATQA_MODEL is empty)")
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSource(name, str(path), local=True)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or path.suffix:
        raise ModelUnavailable(f"model folder {name!r} does not exist")
    cached = _cached_snapshot(name)
    if cached is not None:
        return ModelSource(name, cached, local=True)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelUnavailable(f"model {name!r} is not cached and HF_HUB_OFFLINE is set")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    status = _hub_status(endpoint, name, timeout)
    if status is None:
        raise ModelUnavailable(f"model {name!r} is not cached and the model hub ({endpoint}) is unreachable")
    if status != 200:
        raise ModelUnavailable(f"model {name!r} is not cached and the hub answered HTTP {status} for it")
    return ModelSource(name, name, local=False)


def _cached_snapshot(name: str) -> str | None:
    """The local snapshot folder of a hub model when its files are in the HF cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with sentence-transformers
        return None
    for marker in ("modules.json", "config.json"):
        found = try_to_load_from_cache(name, marker)
        if isinstance(found, str):
            return str(Path(found).parent)
    return None


def _hub_status(endpoint: str, name: str, timeout: float) -> int | None:
    """HTTP status of the hub's page for the model, or None when the hub cannot be reached.

    A real request rather than a TCP connect: a proxy may accept connections for a hub it will
    never serve, and the libraries would then retry for minutes."""
    url = f"{endpoint.rstrip('/')}/api/models/{quote(name, safe='/')}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code) if exc.code < 500 else None
    except (OSError, ValueError):  # URLError, timeouts, refused connections, a malformed endpoint
        return None


class Embedder:
    """A sentence-transformers model that returns L2-normalised float32 vectors.

    Normalised vectors make FAISS inner product equal to cosine similarity.
    """

    def __init__(self, model: SentenceTransformer, name: str) -> None:
        self.model = model
        self.name = name
        dimension = model.get_embedding_dimension()
        if dimension is None:
            raise ModelUnavailable(f"model {name!r} does not report an embedding dimension")
        self.dimension = int(dimension)

    def encode_documents(self, texts: list[str], progress: bool = False, batch_size: int = 32) -> np.ndarray:
        """Vectors for passages, with the model's document prompt when it has one."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode_document(
            texts, batch_size=batch_size, show_progress_bar=progress, normalize_embeddings=True
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        """A (1, dimension) vector for a question, with the model's query prompt when it has one."""
        vector = self.model.encode_query([text], normalize_embeddings=True)
        return np.ascontiguousarray(vector, dtype=np.float32)


BACKENDS = ("torch", "onnx")


def load_embedder(name: str, timeout: float = 3.0, backend: str = "torch", query_threads: int = 1) -> Embedder:
    """Load the embedding model, or raise ModelUnavailable quickly with the reason.

    backend "onnx" runs the same model on ONNX Runtime with int8 weights (exported once and cached,
    see `threatqa.onnx_backend`); it returns an object with the Embedder interface."""
    if backend not in BACKENDS:
        raise ModelUnavailable(f"unknown embedding backend {backend!r}; choose one of {list(BACKENDS)}")
    source = resolve_model(name, timeout)
    if backend == "onnx":
        from threatqa.onnx_backend import load_onnx_embedder

        return load_onnx_embedder(name, source.location, source.local, query_threads)  # type: ignore[return-value]
    return Embedder(_load(source, cross_encoder=False), name)


def load_reranker(name: str, timeout: float = 3.0) -> CrossEncoder:
    """Load the optional cross-encoder, or raise ModelUnavailable quickly with the reason."""
    return _load(resolve_model(name, timeout), cross_encoder=True)


def _load(source: ModelSource, cross_encoder: bool) -> Any:
    try:
        if cross_encoder:
            from sentence_transformers import CrossEncoder

            return CrossEncoder(source.location, local_files_only=source.local)
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(source.location, local_files_only=source.local)
    except Exception as exc:  # a broken folder or a failed download: same fallback, with the reason
        raise ModelUnavailable(f"model {source.name!r} could not be loaded ({type(exc).__name__}: {exc})") from None
