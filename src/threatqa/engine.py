"""The one core behind the CLI, the HTTP API and the UI: settings -> models + index -> answers."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from threatqa.answer import Answer, answer_from_json, build_answer, collapse
from threatqa.audit import AuditLog, AuditRecord
from threatqa.chunking import Chunk, ChunkConfig
from threatqa.config import Settings
from threatqa.dense import DenseConfig, DensePart, set_compute_threads
from threatqa.embeddings import (
    BUNDLED_MODEL,
    HOW_TO_PROVIDE,
    Embedder,
    bundled_model_folder,
    load_embedder,
    load_reranker,
)
from threatqa.errors import (
    AuditError,
    ConfigError,
    IndexMismatch,
    IndexMissing,
    ModelUnavailable,
    QuestionError,
    QuestionTooLong,
    ThreatQAError,
)
from threatqa.index import BuildReport, DocumentInfo, Index, build_index, current_version, is_stale, open_index
from threatqa.ingest import IngestLimits
from threatqa.ingest_display import text_key
from threatqa.lexical_subset import Part, Statistics
from threatqa.manifest import check_model
from threatqa.policy import Access, Labels, label_documents, load_policy, policy_path
from threatqa.retrieval import Retriever
from threatqa.versions import LiveVersion


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Status:
    """What is running, for start-up messages and /api/health."""

    mode: str
    documents: int
    passages: int
    index_version: str
    model: str | None
    notices: tuple[str, ...]


@dataclass(frozen=True)
class _Live:
    """The index version in use, its documents, and what every answer from it must say (a stale
    or lexical-only index), swapped as one object so that every answer sees exactly one version."""

    retriever: Retriever
    documents: dict[str, DocumentInfo]
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Labelled:
    """Every document's label under the policy, for one index version and one state of the policy file,
    with each label's BM25 counts (counted when labelling, all labels in one pass), and each readable
    set's documents and statistics, summed from its labels' counts as first needed (`Engine._readable`)."""

    index: Index
    stamp: tuple[int, ...] | None  # the policy file's (mtime, size, inode); None: no file
    labels: Labels
    parts: dict[str, Part]  # by label name
    windows: dict[str, DensePart]  # by label name (none in lexical mode)
    subsets: dict[tuple[str, ...], tuple[frozenset[str], Statistics | None]]


SUBSETS_KEPT = 64  # readable sets (distinct combinations of labels) whose statistics are kept


class Engine:
    """Answers questions from one index; picks up a newer index version between questions."""

    def __init__(
        self, settings: Settings, retriever: Retriever, notices: list[str], embedder: Embedder | None = None
    ) -> None:
        self.settings = settings
        self._live = _live(retriever, settings, embedder)
        self._embedder = embedder  # kept even while the index is lexical-only, for the next version
        self.notices = tuple(notices)
        self.audit = AuditLog(settings.audit, settings.audit_key)
        self._lock = threading.Lock()
        self._refused: dict[str, str] = {}  # versions that failed to load or were found damaged, and why
        self._current = LiveVersion(settings.index)  # the live version's folder, looked at before each question
        self._policy_file = policy_path(settings.docs, settings.policy)
        self._labelled: _Labelled | None = None
        self._policy_lock = threading.Lock()
        # the paths of all the documents a question may search, and the documents they are of: an unfiltered
        # question at 1M passages searches 10,000 documents, and their list was made anew for each answer
        self._searched: tuple[dict[str, DocumentInfo], tuple[str, ...]] | None = None

    @classmethod
    def start(cls, settings: Settings, build: str = "missing", log: Callable[[str], None] = _stderr) -> Engine:
        """Load models and index. build: "never", "missing" (build when there is no index) or
        "stale" (also rebuild when the docs folder or the model changed)."""
        notices: list[str] = []

        def note(message: str) -> None:
            notices.append(message)
            log(f"threatqa: {message}")

        embedder: Embedder | None = None
        tried = False
        missing = current_version(settings.index) is None
        if build == "stale" or (build == "missing" and missing):
            embedder, tried = try_embedder(settings, note), True
            limits = IngestLimits.from_settings(settings)
            if missing or is_stale(settings.docs, settings.index, embedder, chunk_config(settings), limits):
                try:
                    report = index_folder(settings, embedder, lambda message: log(f"threatqa: {message}"))
                    log(f"threatqa: {describe_build(report)}")
                except Exception as exc:
                    if missing:
                        raise
                    problem = str(exc) if isinstance(exc, ThreatQAError) else f"{type(exc).__name__}: {exc}"
                    note(f"the index was not rebuilt ({problem}); answering from the previous version")
        index = open_index(settings.index)
        if index.fallback_notice:
            note(index.fallback_notice)
        index.lexical.warm_up()
        if index.has_dense and not tried:
            embedder = try_embedder(settings, note)
        elif not index.has_dense and not tried and not settings.model:
            note("lexical (BM25) mode: no embedding model configured")
        if embedder is not None and index.has_dense:
            check_model(index.manifest, embedder)  # another model is refused; another backend is noticed (_live)
        reranker = None
        if settings.rerank_model:
            try:
                reranker = load_reranker(settings.rerank_model, settings.hub_timeout)
            except ModelUnavailable as exc:
                note(f"re-ranking skipped: {exc}")
        retriever = _retriever(settings, index, embedder, reranker)
        set_compute_threads(settings.question_threads())
        engine = cls(settings, retriever, notices, embedder)
        labels = engine.labels()  # a bad policy file stops the start, not the first question
        if labels.policy is not None:
            log(f"threatqa: need-to-know policy {engine._policy_file} (version {labels.policy.version[:12]})")
        for message in engine._live.notices:
            log(f"threatqa: {message}")
        return engine

    @property
    def index(self) -> Index:
        return self._live.retriever.index

    @property
    def retriever(self) -> Retriever:
        return self._live.retriever

    def status(self, access: Access | None = None) -> Status:
        """What is running; documents and passages are those `access` may read when a policy exists."""
        live = self._live
        index = live.retriever.index
        docs, subset = self._readable(live, access)
        return Status(live.retriever.mode, len(docs), len(index) if subset is None else subset.count, index.version,
                      index.manifest.model if live.retriever.embedder else None,
                      tuple(dict.fromkeys(self.notices + live.notices)))  # fmt: skip

    def documents(self, access: Access | None = None) -> list[DocumentInfo]:
        """The indexed documents; under a policy, only those `access` may read (none given: the open ones)."""
        return list(self._readable(self._live, access)[0].values())

    def labels(self) -> Labels:
        """Every document's label under the policy file as it is now (recomputed when it changes)."""
        return self._labelling(self._live).labels

    def _labelling(self, live: _Live) -> _Labelled:
        """The labels for this index version and the policy file as it is now: worked out again when
        either changed (labels are metadata: no re-embedding). A policy file that cannot be read or
        parsed raises ConfigError, so nothing is answered under a policy half understood."""
        stamp = _stamp(self._policy_file)
        state = self._labelled
        if state is not None and state.index is live.retriever.index and state.stamp == stamp:
            return state
        with self._policy_lock:
            required = bool(self.settings.policy)
            policy = load_policy(self._policy_file, self.settings.default_label, required)
            if policy is None and state is not None and state.labels.policy is not None:
                # a policy that disappears under a running server would open every document: refuse instead
                raise ConfigError(f"the policy file {self._policy_file} was removed; restart to run without a policy")
            index = live.retriever.index
            documents = ((d.id, d.path, _opening(index, d)) for d in live.documents.values())
            labels = label_documents(policy, documents)
            state = _Labelled(index, stamp, labels, *_label_parts(live.retriever, labels), {})
            self._labelled = state
            return state

    def _readable(
        self, live: _Live, access: Access | None, state: _Labelled | None = None
    ) -> tuple[dict[str, DocumentInfo], Statistics | None]:
        """The documents `access` may read and their passages' BM25 statistics (None: no policy,
        everything is readable), under `state` (default: the labels now). Each readable set is worked
        out once per index version and policy."""
        state = state or self._labelling(live)
        if state.labels.policy is None:
            return live.documents, None
        key = state.labels.key(access)
        found = state.subsets.get(key)
        if found is None:
            ids = frozenset(state.labels.readable(access) or ())
            # everything readable: the index's own statistics are the subset's, nothing to work out
            everything = len(ids) == len(live.documents)
            found = ids, None if everything else _subset(live.retriever, state, list(key[1:]))
            with self._policy_lock:
                while len(state.subsets) >= SUBSETS_KEPT:
                    state.subsets.pop(next(iter(state.subsets)))
                state.subsets[key] = found
        ids, subset = found
        return {doc_id: d for doc_id, d in live.documents.items() if doc_id in ids}, subset

    def ask(
        self,
        question: str,
        k: int | None = None,
        documents: list[str] | None = None,
        user: str | None = None,
        channel: str = "cli",
        access: Access | None = None,
    ) -> Answer:
        """Answer one question with quoted, cited passages (or abstain), logged in the audit log.

        Under a need-to-know policy only the documents `access` may read are searched (no access: the
        open ones), as if the index held nothing else: passages, scores, abstention and the documents
        searched are those of an index of the readable documents alone (policy.py).

        Raises QuestionError for a request outside the limits (`check_request`) and AuditError when
        the record cannot be written: no answer goes out unrecorded."""
        return self.ask_logged(question, k, documents, user, channel, access)[0]

    def ask_logged(
        self,
        question: str,
        k: int | None = None,
        documents: list[str] | None = None,
        user: str | None = None,
        channel: str = "cli",
        access: Access | None = None,
    ) -> tuple[Answer, dict[str, Any]]:
        """`ask`, and the answer's JSON (`Answer.to_json()`), made once for its audit record."""
        for attempt in range(2):
            self.reload()
            live = self._live  # one consistent index version for the whole answer
            try:
                answer, k = self._answer(live, question, k, documents, access)
                break
            except IndexMismatch as exc:  # found damaged while reading: answer from the previous version
                live.retriever.index.damage = str(exc)
                _stderr(f"threatqa: {exc}")
                if attempt:
                    raise
        settings = {"k": k, "documents": documents or [], "mode": live.retriever.mode, **self._audit_settings()}
        if answer.policy_version is not None:  # who asked under which policy (records without one are unchanged)
            groups = sorted(access.groups) if access is not None else []
            settings |= {"policy_version": answer.policy_version, "groups": groups}  # the one its citations name
        payload = answer.to_json() | {"settings": settings}
        user = user if user is not None or access is None else access.user
        self.audit.append("answer", answer.question, payload, user=user, channel=channel, record_id=answer.id)
        return answer, {key: value for key, value in payload.items() if key != "settings"}

    def _answer(
        self, live: _Live, question: str, k: int | None, documents: list[str] | None, access: Access | None = None
    ) -> tuple[Answer, int]:
        state = self._labelling(live)  # one policy state for the filter and the labels the citations carry
        docs, subset = self._readable(live, access, state)
        retriever = live.retriever
        k = self.check_request(question, k, documents, docs)  # a document the user may not read is unknown
        fetch = k

        def text(chunk: Chunk) -> str:  # copies of one text (a report in several formats) are one passage
            return text_key(chunk.text, docs[chunk.doc_id].path)

        # k distinct texts in one search (searching again for more took 12% of SQuAD questions at 100k passages
        # in benchmarks/query.py, whose documents repeat sentences); again only should the search fall short
        result = retriever.search(question, fetch, documents, subset, distinct=text)
        for _ in range(3):
            distinct = len(collapse(result.hits, docs))
            if distinct >= k or len(result.hits) < fetch:
                break
            fetch = min(fetch * k // max(1, distinct) + k, 4 * MAX_K)
            result = retriever.search(question, fetch, documents, subset, distinct=text)
        searched = self._searched_paths(docs, documents)
        model = retriever.index.manifest.model if retriever.embedder else None
        result = replace(result, notices=result.notices + live.notices)
        answer = build_answer(result.question, result, docs, retriever.index.version, model, searched, limit=k,
                              labels=state.labels)  # fmt: skip
        return replace(answer, id=uuid.uuid4().hex), k

    def _searched_paths(self, docs: dict[str, DocumentInfo], documents: list[str] | None) -> tuple[str, ...]:
        """The paths of the documents searched: those of `docs` that `documents` names (None: all)."""
        if documents:
            return tuple(d.path for d in docs.values() if d.id in documents or d.path in documents)
        known = self._searched
        if known is None or known[0] is not docs:  # the same dict while the index version and policy stay
            known = self._searched = (docs, tuple(d.path for d in docs.values()))
        return known[1]

    def check_request(
        self,
        question: object,
        k: object = None,
        documents: object = None,
        known: dict[str, DocumentInfo] | None = None,
        access: Access | None = None,
    ) -> int:
        """The one validation of a question request, whichever front end it came through; returns k.
        Document names are checked against `known`, else the documents `access` may read (a document
        the user may not read is unknown, with the same message as one that does not exist).

        Raises QuestionTooLong over the length limit and QuestionError for anything else out of bounds;
        messages quote at most a few of the bad values, never the whole request."""
        if not isinstance(question, str):
            raise QuestionError(f"the question must be text, not {_kind(question)}")
        if not question.strip():
            raise QuestionError("the question is empty: type a question")
        limit = self.settings.max_question_chars
        if len(question) > limit:
            raise QuestionTooLong(
                f"the question is {len(question)} characters long; the limit is {limit} (THREATQA_MAX_QUESTION_CHARS)"
            )
        if k is None:
            k = self.settings.top_k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise QuestionError(f"k must be a whole number from 1 to {MAX_K}, not {str(k)[:20]!r}")
        if documents is None:
            return k
        if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
            raise QuestionError(f"documents must be a list of document ids or paths, not {_kind(documents)}")
        if len(documents) > MAX_DOCUMENT_FILTER:
            raise QuestionError(f"documents lists {len(documents)} entries; at most {MAX_DOCUMENT_FILTER} are allowed")
        if known is None:
            known = self._readable(self._live, access)[0]
        names = {name for d in known.values() for name in (d.id, d.path)}
        unknown = [name for name in documents if name not in names]
        if unknown:
            shown = ", ".join(repr(name[:80]) for name in unknown[:5]) + (" …" if len(unknown) > 5 else "")
            raise QuestionError(
                f"{len(unknown)} unknown document(s): {shown}; /api/documents lists the ids and paths to use"
            )
        return k

    def logged_answer(
        self, answer_id: str, access: Access | None = None, every: bool = False
    ) -> tuple[Answer, AuditRecord] | None:
        """An answer as the audit log holds it, with its record; None when there is no such answer or when
        it cites a document `access` may not read (an id in a link or a chat message can be forged).
        `every`: whatever it cites (an auditor's view; the log's records are theirs to read)."""
        try:
            record = self.audit.get(answer_id)
        except AuditError:
            return None
        if record.kind != "answer":
            return None
        answer = answer_from_json(record.payload | {"id": record.id})
        if not every and not answer.document_ids() <= {d.id for d in self.documents(access)}:
            return None
        return answer, record

    def rebuild(self, log: Callable[[str], None] = _stderr) -> BuildReport:
        """Build the index again from the docs folder with this engine's model (`threatqa index`), and
        answer from the new version from the next question on."""
        report = index_folder(self.settings, self._embedder, log)
        self.reload()
        return report

    def feedback(self, answer_id: str, helpful: bool, user: str | None = None, channel: str = "ui") -> None:
        """Store a thumbs up/down for a logged answer, with its question."""
        question = self.audit.get(answer_id).question
        self.audit.append("feedback", question, {"answer_id": answer_id, "helpful": bool(helpful)}, user, channel)

    def _audit_settings(self) -> dict[str, object]:
        keys = (
            "model",
            "rerank_model",
            "candidates",
            "fusion_weight",
            "min_relevance",
            "min_dense_score",
            "chunk_size",
        )
        return {key: getattr(self.settings, key) for key in keys}

    def reload(self) -> bool:
        """Switch to the live index version if a build has replaced ours, or away from ours if it was
        found damaged (then to the newest whole version); True when switched.

        A new version that cannot be opened (damaged, or built with another model) is refused
        with a notice, and the engine keeps answering from the version it has."""
        current = self.index
        folder = self._current()
        moved = folder is not None and folder != current.folder and folder.name not in self._refused
        if not moved and current.damage is None:
            return False
        with self._lock:
            current = self.index
            if current.damage is not None:
                self._refused[current.folder.name] = current.damage
            elif folder is None or folder == current.folder:
                return False
            try:
                index = open_index(self.settings.index, damaged=self._refused)
                if self._embedder is not None and index.has_dense:
                    check_model(index.manifest, self._embedder)
            except ThreatQAError as exc:
                if folder is not None:
                    self._refused.setdefault(folder.name, str(exc))
                _stderr(f"threatqa: kept index {current.version}; the new version was refused: {exc}")
                return False
            if index.folder == current.folder:
                index.close()
                return False
            if index.fallback_notice:
                _stderr(f"threatqa: {index.fallback_notice}")
            old = self._live.retriever
            retriever = _retriever(self.settings, index, self._embedder, old.reranker)
            self._live = _live(retriever, self.settings, self._embedder)
            old.index.close()  # its file is released now; a question still reading it reopens it
            return True


MAX_K = 100  # passages per answer, whatever the front end
MAX_DOCUMENT_FILTER = 1000  # entries in a request's document filter


def _label_parts(retriever: Retriever, labels: Labels) -> tuple[dict[str, Part], dict[str, DensePart]]:
    """Each label's BM25 counts (lexical_subset.Part) and dense windows (dense.DensePart), by its name;
    none without a policy."""
    if labels.policy is None:
        return {}, {}
    by_label: dict[str, list[str]] = {}
    for doc_id, label in labels.by_document.items():
        by_label.setdefault(label.name, []).append(doc_id)
    names = sorted(by_label)
    masks = [retriever.mask(by_label[name]) for name in names]
    dense = retriever.index.dense
    windows = dict(zip(names, dense.parts(masks))) if dense is not None else {}
    return dict(zip(names, retriever.index.lexical.parts(masks))), windows


def _subset(retriever: Retriever, state: _Labelled, names: list[str]) -> Statistics:
    """The statistics of the readable set of these labels, summed from their parts, with their dense parts."""
    statistics = retriever.index.lexical.combine([state.parts[name] for name in names])
    if not state.windows:
        return statistics
    return replace(statistics, windows=tuple(state.windows[name] for name in names))


def _stamp(path: Path) -> tuple[int, ...] | None:
    """What tells a changed policy file from the one read: its modification time, size and inode."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size, found.st_ino


FRONT_MATTER_SUFFIXES = (".md", ".markdown")  # the formats whose front matter ingestion reads (ingest_formats)


def _opening(index: Index, document: DocumentInfo) -> str:
    """The opening of a document's text, where its front matter is (only read for formats that have it)."""
    if not document.path.lower().endswith(FRONT_MATTER_SUFFIXES):
        return ""
    return index.document(document.id).text[:8192]


def _kind(value: object) -> str:
    return "nothing (null)" if value is None else type(value).__name__


def _live(retriever: Retriever, settings: Settings, embedder: Embedder | None) -> _Live:
    notices = [retriever.index.fallback_notice] if retriever.index.fallback_notice else []
    if settings.model and not retriever.index.has_dense:
        notices.append(
            "this index has no dense vectors (it was built in lexical mode) although a model is configured: "
            "answers are lexical (BM25) only; run `threatqa index` to add them"
        )
    elif settings.model and embedder is None:
        notices.append("the embedding model could not be loaded: answers are lexical (BM25) only")
    elif embedder is not None:
        notices.extend(check_model(retriever.index.manifest, embedder))
    return _Live(retriever, {d.id: d for d in retriever.index.documents()}, tuple(notices))


def _retriever(settings: Settings, index: Index, embedder: Embedder | None, reranker: object) -> Retriever:
    return Retriever(
        index, embedder, reranker, candidates=settings.candidates, min_relevance=settings.min_relevance,
        min_dense_score=settings.min_dense_score, max_question_chars=settings.max_question_chars,
        fusion_weight=settings.fusion_weight, coverage_weight=settings.coverage_weight,
    )  # type: ignore[arg-type]  # fmt: skip


def try_embedder(settings: Settings, note: Callable[[str], None]) -> Embedder | None:
    """The configured model; a hub model that cannot be had falls back to the bundled one, with a notice.
    None only in lexical mode (no model configured) or when no model at all can be loaded."""
    if not settings.model:
        note("no embedding model configured: lexical (BM25) mode")
        return None

    def load(name: str) -> Embedder:
        expected = settings.model_sha256 if name == settings.model else ""
        return load_embedder(name, settings.hub_timeout, settings.backend, settings.question_threads(), expected)

    try:
        return load(settings.model)
    except ModelUnavailable as exc:
        problem = str(exc)
    if settings.model == BUNDLED_MODEL or bundled_model_folder() is None:
        note(f"{problem}; running in lexical (BM25) mode. {HOW_TO_PROVIDE[0].upper()}{HOW_TO_PROVIDE[1:]}.")
        return None
    note(f"{problem}; using the bundled model {BUNDLED_MODEL} instead")
    try:
        return load(BUNDLED_MODEL)
    except ModelUnavailable as exc:
        note(f"{exc}; running in lexical (BM25) mode")
        return None


def index_folder(
    settings: Settings, embedder: Embedder | None, log: Callable[[str], None] = _stderr, lexical: bool = False
) -> BuildReport:
    """Build or update the index from the docs folder. A hybrid index is replaced by a lexical one
    only in lexical mode (no model configured) or when `lexical` says so."""
    if not settings.docs.is_dir():
        raise IndexMissing(f"docs folder {settings.docs} does not exist; set --docs or THREATQA_DOCS")
    try:  # recorded in the manifest; what is enforced is read again at every question
        policy = load_policy(policy_path(settings.docs, settings.policy), settings.default_label, bool(settings.policy))
    except ConfigError as exc:
        log(f"warning: {exc}; this index version records no policy (answers refuse until it is fixed)")
        policy = None
    return build_index(
        settings.docs, settings.index, embedder, chunk_config(settings), settings.max_file_mb, warn=log,
        dense=DenseConfig(settings.ann_threshold, settings.ann_nprobe), allow_lexical=lexical or not settings.model,
        limits=IngestLimits.from_settings(settings), policy=policy,
    )  # fmt: skip


def chunk_config(settings: Settings) -> ChunkConfig:
    return ChunkConfig(settings.chunk_size, settings.chunk_overlap, settings.chunk_max, settings.chunk_window)


def counted(number: int, noun: str) -> str:
    """A count as people write it: "1 document", "2 documents"."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def describe_build(report: BuildReport) -> str:
    documents, passages = counted(report.documents, "document"), counted(report.passages, "passage")
    if not report.changed:
        return f"index {report.version} is up to date ({documents}, {passages})"
    return (
        f"indexed {documents} into {passages} ({report.mode} mode, version "
        f"{report.version}): {len(report.added)} added, {len(report.updated)} changed, {len(report.removed)} "
        f"removed; {report.embedded} windows embedded, {report.reused} reused, in {report.seconds:.1f} s"
    )
