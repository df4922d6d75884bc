"""ONNX Runtime backend for stage 3 (embeddings): the same vectors as sentence-transformers, faster on CPU.

sentence-transformers' own `backend="onnx"` needs optimum, which does not install beside the
project's transformers; so the transformer is exported once with `torch.onnx.export`, quantised
to int8 with ONNX Runtime's dynamic quantisation, and run with onnxruntime and the model's own
`tokenizers` tokenizer. Pooling, normalisation and the query/document prompts are read from the
sentence-transformers model, so the vectors match its own (cosine > 0.9999 in fp32).

The export is cached in the user's cache folder (`$XDG_CACHE_HOME/threatqa/onnx/<fingerprint>/`),
keyed by the model's content fingerprint, never written into the model folder (which may be
read-only, shared, or a package's). Serving from the cache imports neither torch nor
sentence-transformers, which keeps cold start short.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from threatqa.embeddings import TokenFit
from threatqa.errors import ModelUnavailable

USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "threatqa" / "onnx"
EXPORT_VERSION = 2  # bump when the export itself changes, so old caches are rebuilt
POOLING_MODES = ("mean", "cls", "max", "lasttoken")
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
INSTALL_HINT = "the onnx backend needs onnxruntime and onnx: pip install 'threatqa[onnx]'"


@dataclass(frozen=True)
class OnnxSpec:
    """What the exported graph needs around it to reproduce the sentence-transformers model."""

    fingerprint: str  # of the source model's content (embeddings.model_fingerprint)
    dimension: int
    max_length: int
    pooling: str
    query_prompt: str
    document_prompt: str
    input_names: tuple[str, ...]
    export_version: int = EXPORT_VERSION


class OnnxEmbedder(TokenFit):
    """Embedder-compatible (encode_documents / encode_query / dimension / name) on ONNX Runtime.

    Queries run on a session of `query_threads` (one by default): on a 2-core machine two
    concurrent questions then use one core each instead of fighting over both. Documents (index
    builds) get a session with every core, created on first use so a server that only answers
    never pays for it."""

    backend = "onnx"

    def __init__(self, folder: Path, name: str, quantize: bool = True, query_threads: int = 1) -> None:
        self.folder = folder
        self.name = name
        self.quantized = quantize
        self.precision = "int8" if quantize else "fp32"
        spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
        self.spec = OnnxSpec(**(spec | {"input_names": tuple(spec["input_names"])}))
        self.fingerprint = self.spec.fingerprint
        self.dimension = self.spec.dimension
        self.max_tokens = self.spec.max_length
        self.document_prompt = self.spec.document_prompt
        self._path = folder / ("model-int8.onnx" if quantize else "model.onnx")
        self._tokenizer = _tokenizer(folder / "tokenizer.json", self.spec.max_length)
        self._query_session = _session(self._path, threads=query_threads)
        # a question's words are embedded beside the question (retrieval.Retriever.search): on one session
        # the two runs took as long as one after the other, on two sessions 0.65x (2 cores, issue 17)
        self._words_session = _session(self._path, threads=1)
        self._document_session: Any = None
        self._lock = threading.Lock()
        self._counter = _tokenizer(folder / "tokenizer.json", None)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text takes as a passage (special tokens and the document prompt included)."""
        prompt = self.spec.document_prompt
        return [len(e.ids) for e in self._counter.encode_batch_fast([prompt + t for t in texts])] if texts else []

    def encode_documents(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Vectors for passages, with the model's document prompt when it has one."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            if self._document_session is None:
                self._document_session = _session(self._path, threads=os.cpu_count() or 1)
        # sorting by length keeps padding (wasted work) small within a batch, as sentence-transformers does
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        prompt = self.spec.document_prompt
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._encode(self._document_session, [prompt + texts[i] for i in rows])
        return out

    def encode_query(self, text: str) -> np.ndarray:
        """A (1, dimension) vector for a question, with the model's query prompt when it has one."""
        return self.encode_queries([text])

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Vectors for questions (or a question's words), in one run of the query session."""
        return self._encode(self._query_session, [self.spec.query_prompt + text for text in texts])

    def encode_words(self, words: list[str]) -> np.ndarray:
        """Vectors for a question's words, as `encode_queries` makes them, on a session of their own."""
        return self._encode(self._words_session, [self.spec.query_prompt + word for word in words])

    def _encode(self, session: Any, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, {name: feeds[name] for name in self.spec.input_names})[0]
        vectors = _pool(hidden, mask, self.spec.pooling)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def load_onnx_embedder(
    name: str, location: str, fingerprint: str, query_threads: int = 1, quantize: bool = True
) -> OnnxEmbedder:
    """The ONNX embedder for a local model folder, exporting (and quantising) it on first use."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelUnavailable(f"model {name!r}: {INSTALL_HINT}") from None
    folder = cache_folder(fingerprint)
    if not _cached(folder, fingerprint):
        export(name, location, folder, fingerprint)
    return OnnxEmbedder(folder, name, quantize, query_threads)


def cache_folder(fingerprint: str) -> Path:
    """The export's folder in the user cache: one per model content, wherever the model lies."""
    return USER_CACHE / fingerprint[:32]


def export(name: str, location: str, folder: Path, fingerprint: str) -> None:
    """Export the model's transformer to ONNX (fp32 and int8) with what pooling needs, atomically."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ModelUnavailable(f"model {name!r}: {INSTALL_HINT}") from None
    try:
        model = SentenceTransformer(location, local_files_only=True, device="cpu")
    except Exception as exc:
        raise ModelUnavailable(f"model {name!r} could not be loaded ({type(exc).__name__}: {exc})") from None
    spec = _spec(model, name, fingerprint)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    root = logging.getLogger()
    level = root.level
    try:
        # the tracer and the quantiser warn about things that do not apply to a frozen BERT graph
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root.setLevel(logging.ERROR)
            _export_graph(model, staging / "model.onnx", spec.input_names)
            quantize_dynamic(str(staging / "model.onnx"), str(staging / "model-int8.onnx"), weight_type=QuantType.QInt8)
        model.tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
        (staging / "spec.json").write_text(json.dumps(asdict(spec), indent=1), encoding="utf-8")
        if folder.exists():  # a stale export: move it aside, then swap in the new one
            old = folder.with_name(f".old-{uuid.uuid4().hex}")
            os.replace(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, folder)
    finally:
        root.setLevel(level)
        shutil.rmtree(staging, ignore_errors=True)


def _spec(model: Any, name: str, fingerprint: str) -> OnnxSpec:
    kinds = [type(module).__name__ for module in model]
    if kinds[:2] != ["Transformer", "Pooling"] or not set(kinds) <= set(SUPPORTED_MODULES):
        raise ModelUnavailable(
            f"model {name!r} has modules {kinds}; the onnx backend supports {list(SUPPORTED_MODULES)}: "
            "use backend torch for this model"
        )
    pooling = model[1].get_config_dict()
    if pooling.get("pooling_mode") not in POOLING_MODES or not pooling.get("include_prompt", True):
        raise ModelUnavailable(
            f"model {name!r} pools with {pooling}; the onnx backend supports pooling_mode {list(POOLING_MODES)} "
            "with include_prompt true: use backend torch for this model"
        )
    prompts = model.prompts or {}
    document_key = next((key for key in ("document", "passage", "corpus") if key in prompts), None)
    return OnnxSpec(
        fingerprint=fingerprint,
        dimension=int(model.get_embedding_dimension()),
        max_length=int(model.max_seq_length),
        pooling=pooling["pooling_mode"],
        query_prompt=prompts.get("query", ""),  # the same choice as encode_query / encode_document
        document_prompt=prompts.get(document_key, "") if document_key else "",
        input_names=tuple(n for n in model.tokenizer.model_input_names if n != "position_ids"),
    )


def _export_graph(model: Any, path: Path, input_names: tuple[str, ...]) -> None:
    import torch

    transformer = model[0].auto_model.eval()
    if hasattr(transformer, "set_attn_implementation"):
        transformer.set_attn_implementation("eager")  # sdpa's mask handling does not trace to ONNX cleanly

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.transformer(**dict(zip(input_names, inputs))).last_hidden_state

    dummy = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in input_names)
    axes = {name: {0: "batch", 1: "tokens"} for name in (*input_names, "last_hidden_state")}
    with torch.no_grad():
        torch.onnx.export(
            LastHidden(), dummy, str(path), input_names=list(input_names), output_names=["last_hidden_state"],
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip


def _cached(folder: Path, fingerprint: str) -> bool:
    try:
        spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return spec.get("fingerprint") == fingerprint and spec.get("export_version") == EXPORT_VERSION


def _tokenizer(path: Path, max_length: int | None) -> Any:
    """The model's tokenizer: truncating and padding for encoding; neither for counting (None)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if max_length is not None:
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding()  # pads to the longest text in the batch, with the model's pad token
    return tokenizer


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """sentence-transformers' pooling on the token vectors (padding excluded)."""
    weights = mask[..., None].astype(np.float32)
    if mode == "cls":
        return hidden[:, 0].copy()
    if mode == "max":
        return np.where(weights > 0, hidden, -1e9).max(axis=1)
    if mode == "lasttoken":
        return hidden[np.arange(len(hidden)), mask.sum(axis=1) - 1].copy()
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
