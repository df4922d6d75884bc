"""The manifest of an index version (part of the index stage): what it was built from and with,
checked whenever the version is opened or queried.

It records the schema, the model by content (`model_fingerprint`) with the backend and precision
that made the vectors, the chunk settings, every document's hash and every file's checksum.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from threatqa.chunking import ChunkConfig
from threatqa.errors import IndexMismatch
from threatqa.ingest import EXTRACTION_VERSION, IngestLimits, file_sha256, iter_files

# 2: passages keep their own text; 3: lexical views as BM25 matrices by stem / by passage;
# 4: one character view, stored by sentence; 5: passages do not overlap, dense vectors are of
# passage windows, the model is identified by content; 6: digests of passages and document texts,
# checked as they are read; 7: each text stored once (passages as offsets into their document's
# text), the lexical views' compact formats; 8: window vectors kept only as scalar-quantiser codes,
# term vectors as int8, text blocks compressed; 9: text blocks Brotli-compressed in their own file
# (chunks.blocks), the vector codes compressed (dense.codes), windows as offsets in their passage
SCHEMA_VERSION = 10
MANIFEST = "manifest.json"


class ModelIdentity(Protocol):
    """What an embedder says about itself (embeddings.Embedder, onnx_backend.OnnxEmbedder)."""

    name: str
    fingerprint: str
    backend: str
    precision: str
    dimension: int


@dataclass(frozen=True)
class Manifest:
    id: str
    schema_version: int
    created: str
    model: str | None  # the name it was configured by (informative; identity is the fingerprint)
    model_fingerprint: str | None
    backend: str | None
    precision: str | None
    dimension: int | None
    retrievers: tuple[str, ...]
    chunking: dict[str, int]
    documents: dict[str, dict[str, object]]
    chunk_count: int
    window_count: int
    files: dict[str, dict[str, object]]
    inputs: str  # input_fingerprint() of the docs folder this version was built from
    # the need-to-know policy in force when this version was built: its version and each document's
    # label by path (None: no policy). A record, not what is enforced: labels are worked out from the
    # policy as it is now at every question (policy.py), so a policy change needs no rebuild
    policy: dict[str, object] | None = None

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Manifest:
        values = {name: data[name] for name in cls.__dataclass_fields__ if name in data or name != "policy"}
        values["retrievers"] = tuple(values["retrievers"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__} | {"retrievers": list(self.retrievers)}

    @property
    def has_dense(self) -> bool:
        return "dense" in self.retrievers

    def built_with(self, model: ModelIdentity | None) -> bool:
        """True when this version's vectors are what `model` makes (same content, backend, precision);
        a lexical version is built with no model."""
        if model is None or not self.has_dense:
            return model is None and not self.has_dense
        return (self.model_fingerprint, self.backend, self.precision) == (
            model.fingerprint, model.backend, model.precision
        )  # fmt: skip


def read_manifest(folder: Path) -> Manifest:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if data.get("schema_version") != SCHEMA_VERSION:
            raise IndexMismatch(
                f"index schema {data.get('schema_version')} is not the supported {SCHEMA_VERSION}; "
                "rebuild with `threatqa index`"
            )
        return Manifest.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndexMismatch(
            f"index manifest {folder / MANIFEST} is unreadable ({exc}); rebuild with `threatqa index`"
        ) from None


def check_model(manifest: Manifest, model: ModelIdentity) -> list[str]:
    """A dense index must be queried with the model that built it, recognised by content: the same
    model at another path is accepted, another model (even at the same path) is refused. Returns
    notices when the backend or precision differs (the vectors then differ slightly)."""
    if not manifest.has_dense:
        return []
    if manifest.model_fingerprint != model.fingerprint or manifest.dimension != model.dimension:
        raise IndexMismatch(
            f"the index was built with model {manifest.model!r} (content {str(manifest.model_fingerprint)[:12]}, "
            f"{manifest.dimension}-d) but the configured model {model.name!r} is another (content "
            f"{model.fingerprint[:12]}, {model.dimension}-d); rebuild with `threatqa index` or configure the model "
            "the index was built with"
        )
    if (manifest.backend, manifest.precision) != (model.backend, model.precision):
        return [
            f"the index vectors were made with the {manifest.backend} backend ({manifest.precision}) and questions "
            f"are embedded with {model.backend} ({model.precision}): rankings may differ slightly; run "
            "`threatqa index` to rebuild with this backend"
        ]
    return []


def input_fingerprint(
    docs_dir: Path, chunking: ChunkConfig, read: dict[str, str] | None = None, limits: IngestLimits | None = None
) -> str:
    """Hash of every candidate file (path and bytes, skipped ones included) and the chunk settings.

    `read` gives the sha256 of files as a build read them (relative path -> sha256): those count as
    read, whatever the file holds now, and files read but gone since count too, so a file saved or
    removed during a build makes the folder's fingerprint differ from the build's. The extraction
    code's version and the ingest limits count too: a new extractor or policy re-reads the documents."""
    limits = limits or IngestLimits.from_environment()
    settings = [SCHEMA_VERSION, EXTRACTION_VERSION, asdict(chunking), asdict(limits)]
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    entries = dict(read or {})
    if docs_dir.is_dir():
        for path in iter_files(docs_dir, follow_outside_links=limits.follow_outside_links):
            rel = path.relative_to(docs_dir).as_posix()
            if rel not in entries:
                try:
                    entries[rel] = file_sha256(path)
                except OSError:  # unreadable: skipped by the build with a warning, and fingerprinted as such
                    entries[rel] = "unreadable"
    for rel in sorted(entries):
        digest.update(f"{rel}\0{entries[rel]}\n".encode())
    return digest.hexdigest()
