"""Lean audit payloads: an answer's record without the texts it shares with other records.

An answer's payload repeats, for every passage, the passage text (twice: `text` and inside
`reference`) and its document's fields, and, for every answer, the settings and the list of
documents searched. Stored as they are, these make a record of about 13 KB at k=5. Here a record
keeps only what is particular to it (ranks, scores, offsets, hashes) and names everything else by
its SHA-256: each distinct text is stored once in the log's `texts` table, and a passage's text is
found under its own `passage_sha256`. The record's hash covers those names, so the hash chain
covers the texts they name (`audit verify` checks each text against its name).

`encode` returns None for a payload that would not come back identical, and such a record is
stored whole: the encoding never changes what a record says. The log stores a body `compact`,
each name replaced by `#` and the number of its text's row (`audit_store`), and `expand` puts the
names back (`compact` makes sure it gives the very same text); hashes are always over the body with
its names, uncompressed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DOC_KEYS = ("source", "document_id", "title", "date", "document_sha256")  # the same for every passage of a document
SHARED_KEYS = ("index_version", "model")  # in every passage, and the same as the answer's own
INLINE_LIMIT = 96  # characters of JSON: a longer top-level value (settings, documents searched) is stored once
REF = "#"  # {"#": sha256}: a value stored in the texts table
COPIES, COPY_ROWS = "also_in", "@"  # a passage's other copies, and the marker of their rows


@dataclass(frozen=True)
class Lean:
    """A payload as stored: `body` (compact JSON) and the texts it names, by SHA-256."""

    body: str
    texts: dict[str, str]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dumps(value: Any) -> str:
    return _ENCODER.encode(value)


# what json.dumps(value, ensure_ascii=False, separators=(",", ":")) makes, without a new encoder each call
# (an answer's record makes about fifteen: 3 us each instead of 6)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class _Recent:
    """The JSON and SHA-256 of the list of texts last stored: an answer's list of the documents searched is
    most often the previous answer's (at 100k passages 1,000 paths, whose JSON and hash took 0.3 ms an
    answer on 2 cores, and ten times that at 1M). Found by equality, which is quick on a copy of the same
    list (its items are the same objects); only lists of texts, whose JSON equal lists share."""

    def __init__(self) -> None:
        self._last: tuple[list[str], str, str] = ([], "[]", sha256_text("[]"))

    def dumps(self, value: Any) -> str:
        last = self._last  # one read: another thread may replace it meanwhile
        if type(value) is list and len(value) >= RECENT_MIN and last[0] == value:
            return last[1]
        text = dumps(value)
        if type(value) is list and len(value) >= RECENT_MIN and all(type(item) is str for item in value):
            self._last = (list(value), text, sha256_text(text))
        return text

    def sha256(self, text: str) -> str:
        last = self._last
        return last[2] if text is last[1] else sha256_text(text)


RECENT_MIN = 16  # items of a list worth remembering
_recent = _Recent()


def encode(payload: dict[str, Any], question: str, record_id: str) -> Lean | None:
    """The lean form of `payload`, or None when it would not decode to the same payload."""
    texts: dict[str, str] = {}

    def stored(text: str) -> str:
        digest = _recent.sha256(text)
        texts[digest] = text
        return digest

    try:
        fields: dict[str, Any] = {}
        for key, value in payload.items():
            if key == "passages" or (key, value) in (("question", question), ("id", record_id)):
                continue
            text = _recent.dumps(value)
            if len(text) > INLINE_LIMIT:  # stored as it is: never parsed back here
                fields[key] = {REF: stored(text)}
                continue
            inline = json.loads(text)
            fields[key] = {REF: stored(text)} if _is_ref(inline) else inline
        body: dict[str, Any] = {"f": fields, "q": "question" in payload, "i": "id" in payload}
        if "passages" in payload:
            body["p"] = _encode_passages(payload, stored)
    except (KeyError, TypeError, ValueError, AttributeError, _Unfit):
        return None
    # every field is accounted for (kept, named, or rebuilt exactly: checked above), so no decode is needed here
    return Lean(dumps(body), texts)


class _Unfit(Exception):
    """A passage that the lean form cannot hold (its text does not match its hash, odd fields)."""


def _encode_passages(payload: dict[str, Any], stored: Callable[[str], str]) -> dict[str, Any]:
    """Passages as rows: [document, passage_sha256, other fields..., reference without its quote]."""
    passages = payload["passages"]
    if not passages:
        return {"c": None, "d": [], "r": []}
    shared = [k for k in SHARED_KEYS if k in payload]
    columns = ["passage_sha256", *(k for k in _own_keys(passages[0], payload, shared) if k != "passage_sha256")]
    wanted = set(columns)
    docs: dict[str, int] = {}  # the answer's documents, by the name of their fields' text
    named: dict[str, str] = {}
    rows, copy_columns = [], []  # type: ignore[var-annotated]
    for passage in passages:
        if set(_own_keys(passage, payload, shared)) != wanted or any(k not in passage for k in shared):
            raise _Unfit("passages differ in their fields")
        if stored(passage["text"]) != passage["passage_sha256"]:
            raise _Unfit("a text that does not match its passage_sha256")

        def document(item: dict[str, Any]) -> int:
            key = dumps({k: item[k] for k in DOC_KEYS if k in item})
            return docs.setdefault(named.get(key) or named.setdefault(key, stored(key)), len(docs))

        values = [_copies(passage, document, copy_columns) if k == COPIES else passage[k] for k in columns]
        rows.append([document(passage), *values, _reference_head(passage)])
    packed = {"c": stored(dumps(columns)), "d": list(docs), "r": rows}
    if copy_columns:
        packed["a"] = stored(dumps(copy_columns))
    return packed


def _copies(passage: dict[str, Any], document: Callable[[dict[str, Any]], int], columns: list[str]) -> Any:
    """A passage's other copies (citations of the same text in other files) as rows [document, fields
    in `columns`...] under {COPY_ROWS: rows}: each copy's document fields are named like a passage's,
    its text and the answer's shared fields are the passage's. Copies that this would not give back
    exactly are kept as they are."""
    copies = passage[COPIES]
    if not isinstance(copies, list) or not copies or not all(isinstance(c, dict) for c in copies):
        return copies
    if not columns:
        columns.extend(k for k in copies[0] if k not in {*DOC_KEYS, *SHARED_KEYS, "passage_sha256"})
    rows = []
    for copy in copies:
        row, fields = [-1, *(copy.get(k) for k in columns)], {k: copy[k] for k in DOC_KEYS if k in copy}
        if _copy(row, columns, passage, fields) != copy:  # e.g. fields of its own
            return copies
        rows.append(row)
    for row, copy in zip(rows, copies):
        row[0] = document(copy)
    return {COPY_ROWS: rows}


def _copy(row: list[Any], columns: list[str], passage: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """A copy's citation from its row (its own fields), its document's fields, and the passage's hash
    and the answer's shared fields where the passage has them."""
    copy = dict(zip(columns, row[1:]))
    copy |= {k: passage[k] for k in ("passage_sha256", *SHARED_KEYS) if k in passage}
    return copy | document


def _own_keys(passage: dict[str, Any], payload: dict[str, Any], shared: list[str]) -> list[str]:
    """A passage's fields that are neither its text, its reference, its document's nor the answer's."""
    skip = {"text", "reference", *DOC_KEYS, *(k for k in shared if k in passage and passage[k] == payload[k])}
    return [k for k in passage if k not in skip]


def _quoted(text: str) -> str:
    return ': "' + " ".join(text.split()) + '"'  # how a reference ends: the quote on one line


def _reference_head(passage: dict[str, Any]) -> str:
    """The reference up to its quote ("<title>, <date>, para N"), which the quote completes."""
    reference, tail = passage["reference"], _quoted(passage["text"])
    if not isinstance(reference, str) or not reference.endswith(tail):
        raise _Unfit("a reference that does not end with its quote")
    return reference[: -len(tail)]


def decode(body: str, fetch: Callable[[str], str], question: str, record_id: str) -> dict[str, Any]:
    """The payload as it was logged; `fetch` returns a stored text by its SHA-256 (KeyError when absent)."""
    lean = json.loads(body)
    payload: dict[str, Any] = {}
    if lean["i"]:
        payload["id"] = record_id
    if lean["q"]:
        payload["question"] = question
    for key, value in lean["f"].items():
        payload[key] = json.loads(fetch(value[REF])) if _is_ref(value) else value
    if "p" in lean:
        payload["passages"] = _decode_passages(lean["p"], fetch, payload)
    return payload


def _decode_passages(packed: dict[str, Any], fetch: Callable[[str], str], payload: dict[str, Any]) -> list[dict]:
    if packed["c"] is None:
        return []
    columns = json.loads(fetch(packed["c"]))
    docs = [json.loads(fetch(doc)) for doc in packed["d"]]
    copy_columns = json.loads(fetch(packed["a"])) if "a" in packed else []
    passages = []
    for row in packed["r"]:
        passage = dict(zip(columns, row[1:-1]))
        passage["text"] = fetch(passage["passage_sha256"])
        passage |= docs[row[0]]
        for key in SHARED_KEYS:
            if key in payload and key not in passage:
                passage[key] = payload[key]
        passage["reference"] = row[-1] + _quoted(passage["text"])
        copies = passage.get(COPIES)
        if isinstance(copies, dict) and COPY_ROWS in copies:
            passage[COPIES] = [_copy(r, copy_columns, passage, docs[r[0]]) for r in copies[COPY_ROWS]]
        passages.append(passage)
    return passages


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and REF in value


def refs(body: str) -> list[str]:
    """Every SHA-256 a stored body names: the texts that must be in the log, unaltered."""
    lean = json.loads(body)
    names = [value[REF] for value in lean["f"].values() if _is_ref(value)]
    packed = lean.get("p")
    if packed and packed["c"] is not None:
        names += [packed["c"], *packed["d"], *(row[1] for row in packed["r"])]  # row[1]: the passage_sha256
        names += [packed["a"]] if "a" in packed else []
    return names


_NAME = re.compile(r'"([0-9a-f]{64})"(?![0-9])')  # a text's name in a body (a JSON string), not before a digit
_NUMBER = re.compile(r"#([0-9]+)")  # its number in a compact body


def compact(body: str, numbers: Mapping[str, int]) -> str | None:
    """`body` with each name in `numbers` (a JSON string) replaced by `#` and that text's number in the
    log; None when `expand` would not give back `body` exactly.

    It does whenever `body` holds no `#` before a digit: then the `#`s and digits that `expand` reads
    are the numbers put in, each whole (a name is replaced only where no digit follows it), so it puts
    back each name where it was and leaves the rest as it is."""
    if _NUMBER.search(body):
        return None
    return _NAME.sub(lambda m: f"#{numbers[m[1]]}" if m[1] in numbers else m[0], body)


def expand(packed: str, name: Callable[[int], str]) -> str:
    """A compact body with its names put back: `name` gives a text's name from its number."""
    return _NUMBER.sub(lambda m: f'"{name(int(m[1]))}"', packed)
