"""Lean audit payloads: an answer's record without the texts it shares with other records.

An answer's payload repeats, for every passage, the passage text (twice: `text` and inside
`reference`) and its document's fields, and, for every answer, the settings and the list of
documents searched. Stored as they are, these make a record of about 13 KB at k=5. Here a record
keeps only what is particular to it (ranks, scores, offsets, hashes) and names everything else by
its SHA-256: each distinct text is stored once in the log's `texts` table, and a passage's text is
found under its own `passage_sha256`. The record's hash covers those names, so the hash chain
covers the texts they name (`audit verify` checks each text against its name).

`encode` returns None for a payload that would not come back identical, and such a record is
stored whole: the encoding never changes what a record says.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from threatqa.answer import Citation, Passage

DOC_KEYS = ("source", "document_id", "title", "date", "document_sha256")  # the same for every passage of a document
SHARED_KEYS = ("index_version", "model")  # in every passage, and the same as the answer's own
INLINE_LIMIT = 96  # characters of JSON: a longer top-level value (settings, documents searched) is stored once
REF = "#"  # {"#": sha256}: a value stored in the texts table


@dataclass(frozen=True)
class Lean:
    """A payload as stored: `body` (compact JSON) and the texts it names, by SHA-256."""

    body: str
    texts: dict[str, str]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def encode(payload: dict[str, Any], question: str, record_id: str) -> Lean | None:
    """The lean form of `payload`, or None when it would not decode to the same payload."""
    texts: dict[str, str] = {}

    def stored(text: str) -> str:
        digest = sha256_text(text)
        texts[digest] = text
        return digest

    try:
        fields: dict[str, Any] = {}
        for key, value in payload.items():
            if key == "passages" or (key, value) in (("question", question), ("id", record_id)):
                continue
            text = dumps(value)
            fields[key] = {REF: stored(text)} if len(text) > INLINE_LIMIT else value
        body: dict[str, Any] = {"f": fields, "q": "question" in payload, "i": "id" in payload}
        if "passages" in payload:
            body["p"] = _encode_passages(payload, stored)
        lean = Lean(dumps(body), texts)
        same = decode(lean.body, texts.__getitem__, question, record_id) == json.loads(dumps(payload))
    except (KeyError, TypeError, ValueError, AttributeError, _Unfit):
        return None
    return lean if same else None


class _Unfit(Exception):
    """A passage that the lean form cannot hold (its text does not match its hash, odd fields)."""


def _encode_passages(payload: dict[str, Any], stored: Callable[[str], str]) -> dict[str, Any]:
    passages = payload["passages"]
    if not passages:
        return {"c": None, "d": [], "r": []}
    columns = ["passage_sha256", *(k for k in _own_keys(passages[0], payload) if k != "passage_sha256")]
    docs: list[str] = []
    rows = []
    for passage in passages:
        if set(_own_keys(passage, payload)) != set(columns):
            raise _Unfit("passages differ in their fields")
        if stored(passage["text"]) != passage["passage_sha256"] or passage.get("reference") != _reference(passage):
            raise _Unfit("a text or reference that cannot be rebuilt")
        doc = stored(dumps({k: passage[k] for k in DOC_KEYS if k in passage}))
        if doc not in docs:
            docs.append(doc)
        rows.append([docs.index(doc), *(passage[k] for k in columns)])
    return {"c": stored(dumps(columns)), "d": docs, "r": rows}


def _own_keys(passage: dict[str, Any], payload: dict[str, Any]) -> list[str]:
    """A passage's fields that are neither its text, its reference, its document's nor the answer's."""
    shared = [k for k in SHARED_KEYS if k in payload and k in passage and passage[k] == payload[k]]
    return [k for k in passage if k not in ("text", "reference", *DOC_KEYS, *shared)]


def _reference(passage: dict[str, Any]) -> str | None:
    """The passage's one-line reference, made as the answer makes it (None without the fields)."""
    try:
        citation = Citation(**{name: passage[name] for name in Citation.__dataclass_fields__})
    except KeyError:
        return None
    return Passage(0, passage["text"], 0.0, 0.0, None, None, None, citation).reference()


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
    passages = []
    for row in packed["r"]:
        passage = dict(zip(columns, row[1:]))
        passage["text"] = fetch(passage["passage_sha256"])
        passage |= docs[row[0]]
        for key in SHARED_KEYS:
            if key in payload and key not in passage:
                passage[key] = payload[key]
        passage["reference"] = _reference(passage)
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
    return names
