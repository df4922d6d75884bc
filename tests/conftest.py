"""Shared fixtures: the shipped corpus in a temp folder, and a tiny embedding model built locally.

No test downloads anything: the model is a randomly initialised 2-layer BERT whose vocabulary is
made here from the corpus, saved as a sentence-transformers folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: nothing in the tests may reach a hub

from threatqa.audit import AuditLog
from threatqa.config import Settings

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "docs"
CORPUS_FILE = "NCA-annual-assessment-speech-2023-07-17.txt"


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    """A docs folder holding a copy of the shipped corpus document."""
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(CORPUS / CORPUS_FILE, folder / CORPUS_FILE)
    return folder


def write_docs(root: Path, files: dict[str, str], policy: str | None = None) -> Path:
    """root/docs holding `files` (path: text), and the need-to-know policy beside it when given."""
    from threatqa.policy import POLICY_FILE

    docs = root / "docs"
    for path, text in files.items():
        (docs / path).parent.mkdir(parents=True, exist_ok=True)
        (docs / path).write_text(text, encoding="utf-8")
    if policy is not None:
        (root / POLICY_FILE).write_text(policy, encoding="utf-8")
    return docs


def report_docs(root: Path) -> Path:
    """root/docs holding the shipped corpus and one report in five formats (tests/formats.py)."""
    from formats import REPORT_WRITERS

    docs = root / "docs"
    docs.mkdir()
    shutil.copy(CORPUS / CORPUS_FILE, docs / CORPUS_FILE)
    for write in REPORT_WRITERS.values():
        write(docs)
    return docs


@pytest.fixture()
def settings(tmp_path: Path, docs: Path) -> Settings:
    """Lexical-mode settings over the temp docs folder (no model configured)."""
    return Settings.load(docs=docs, index=tmp_path / "index", audit=tmp_path / "audit.sqlite3", model="")


def build_tiny_model(folder: Path, words: list[str], layers: int = 2, hidden: int = 32) -> Path:
    """Save a randomly initialised BERT with `words` as vocabulary as a sentence-transformers model."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    hf = folder / "hf"
    hf.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    (hf / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(hf / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=hidden * 2, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    transformer = models.Transformer(str(hf), max_seq_length=128)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    out = folder / "st"
    model.save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny local sentence-transformers model whose vocabulary covers the corpus words."""
    text = (CORPUS / CORPUS_FILE).read_text(encoding="utf-8").lower()
    words = [*re.findall(r"[a-z]+", text), "banana", "bread", "football", "water"]
    return build_tiny_model(tmp_path_factory.mktemp("model"), words)


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised BERT cross-encoder (one relevance score), saved locally."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("reranker")
    text = (CORPUS / CORPUS_FILE).read_text(encoding="utf-8").lower()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(re.findall(r"[a-z]+", text)))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=256, num_labels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """Make a file unwritable even for root (chattr +i); skip where the filesystem refuses."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture()
def log(tmp_path: Path) -> AuditLog:
    """An audit log of four answers whose chain verifies."""
    log = AuditLog(tmp_path / "audit.sqlite3")
    for i in range(4):
        log.append("answer", f"question {i}", {"passages": [], "n": i}, user=f"user{i}", channel="api")
    assert log.verify_chain().ok and log.verify_chain().checked == 4
    return log


def tamper_audit(path: Path, *statements: str) -> None:
    """Change an audit log's file around its append-only triggers, as anyone who can write it could."""
    conn = sqlite3.connect(path)
    for table in ("records", "texts"):
        conn.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
        conn.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


_COLUMNS = "id, time, kind, user, channel, question, payload, prev_hash, hash, format, lean, mac"
SWAP_RECORDS_2_AND_3 = (  # statements for tamper_audit: records 2 and 3 change places, each kept whole
    f"CREATE TEMP TABLE r AS SELECT seq, {_COLUMNS} FROM records WHERE seq IN (2, 3)",
    "DELETE FROM records WHERE seq IN (2, 3)",
    f"INSERT INTO records SELECT 5 - seq, {_COLUMNS} FROM r",
)
