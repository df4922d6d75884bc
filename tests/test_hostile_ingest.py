"""Issue 13, ingestion: one bad entry in docs/ never stops indexing, nested HTML is not quadratic,
links out of docs/ are refused, UTF-16 text is text. Each hostile entry sits beside a good file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from formats import WRITERS
from threatqa.ingest import IngestLimits, iter_files, load_documents

IN_PROCESS = IngestLimits(extract_timeout=0)


def _load(docs: Path, limits: IngestLimits = IN_PROCESS) -> tuple[list[str], list[str]]:
    warnings: list[str] = []
    documents = load_documents(docs, warn=warnings.append, limits=limits)
    return sorted(d.path for d in documents), warnings


def test_file_name_with_undecodable_bytes_is_skipped_with_its_name(tmp_path: Path) -> None:
    WRITERS["txt"](tmp_path)
    fd = os.open(os.fsencode(tmp_path) + b"/bad-\xff\xfe.txt", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"text in a file whose name is not UTF-8")
    os.close(fd)
    paths, warnings = _load(tmp_path)
    assert paths == ["notes.txt"]
    assert any("bad-\\xff\\xfe.txt" in w and "UTF-8" in w for w in warnings), warnings
    assert all(w.encode("utf-8") for w in warnings), "warnings are printable"


def test_build_survives_every_hostile_entry(tmp_path: Path) -> None:
    from threatqa.index import build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    WRITERS["txt"](docs)
    fd = os.open(os.fsencode(docs) + b"/bad-\xff\xfe.txt", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    (docs / "mem.txt").symlink_to("/proc/self/mem")
    (docs / "passwd.txt").symlink_to("/etc/passwd")
    os.mkfifo(docs / "pipe.txt")
    (docs / "deep.html").write_text("<html><body>" + "<div>" * 100_000 + "x" + "</div>" * 100_000 + "</body></html>")
    warnings: list[str] = []
    report = build_index(docs, tmp_path / "index", None, warn=warnings.append, allow_lexical=True)
    assert report.documents == 1
    named = " ".join(warnings)
    for name in ("bad-\\xff\\xfe.txt", "mem.txt", "passwd.txt", "pipe.txt", "deep.html"):
        assert name in named, name


def test_unreadable_file_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    WRITERS["txt"](tmp_path)
    (tmp_path / "locked.txt").write_text("secret")
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:  # tests run as root, where chmod 000 does not stop a read
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    paths, warnings = _load(tmp_path)
    assert paths == ["notes.txt"]
    assert any("locked.txt" in w and "PermissionError" in w for w in warnings), warnings


def test_link_to_proc_self_mem_is_refused_and_its_eio_isolated(tmp_path: Path) -> None:
    WRITERS["txt"](tmp_path)
    (tmp_path / "mem.txt").symlink_to("/proc/self/mem")
    paths, warnings = _load(tmp_path)
    assert paths == ["notes.txt"] and "mem.txt" in " ".join(warnings) and "outside" in " ".join(warnings)
    # allowed to follow links out, the read fails with EIO: that file alone is skipped
    paths, warnings = _load(tmp_path, IngestLimits(extract_timeout=0, follow_outside_links=True))
    assert paths == ["notes.txt"]
    assert any("mem.txt" in w and "OSError" in w for w in warnings), warnings


def test_any_exception_in_one_file_skips_only_that_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threatqa.ingest as ingest

    WRITERS["txt"](tmp_path)
    WRITERS["md"](tmp_path)
    real = ingest._describe

    def describe(extracted, suffix, written):  # type: ignore[no-untyped-def]
        if suffix == ".md":
            raise ZeroDivisionError("a bug")
        return real(extracted, suffix, written)

    monkeypatch.setattr(ingest, "_describe", describe)
    paths, warnings = _load(tmp_path)
    assert paths == ["notes.txt"]
    assert warnings == ["warning: skipped brief.md: ZeroDivisionError: a bug"]


def test_links_out_of_docs_are_refused_unless_allowed(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    WRITERS["txt"](docs)
    secret = tmp_path / "secret.txt"
    secret.write_text("the launch code is 0000")
    (docs / "passwd.txt").symlink_to("/etc/passwd")
    (docs / "secret.txt").symlink_to(secret)
    (docs / "again.txt").symlink_to(docs / "notes.txt")  # a link that stays inside docs is fine
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_text("outside text")
    (docs / "linked-dir").symlink_to(outside, target_is_directory=True)
    paths, warnings = _load(docs)
    assert paths == ["again.txt", "notes.txt"]
    assert sum("outside the docs folder" in w for w in warnings) == 2
    assert [p.name for p in iter_files(docs, follow_outside_links=False)] == ["again.txt", "notes.txt"]
    paths, _ = _load(docs, IngestLimits(extract_timeout=0, follow_outside_links=True))
    assert "secret.txt" in paths and "passwd.txt" in paths


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_text_with_a_bom_is_text(tmp_path: Path, codec: str) -> None:
    text = "date 2024-02-01\n\nCafé owners in Zürich reported extortion — £500 each.\n"
    bom = {"utf-16": b"", "utf-16-be": b"\xfe\xff", "utf-32": b""}[codec]
    (tmp_path / "wide.txt").write_bytes(bom + text.encode(codec))
    (document,) = load_documents(tmp_path, limits=IN_PROCESS)
    assert document.text == text and document.date == "2024-02-01"


def test_fifo_in_docs_does_not_block(tmp_path: Path) -> None:
    WRITERS["txt"](tmp_path)
    os.mkfifo(tmp_path / "pipe.txt")
    paths, warnings = _load(tmp_path)
    assert paths == ["notes.txt"] and "pipe.txt" in " ".join(warnings)


def test_deeply_nested_html_is_refused_in_linear_time(tmp_path: Path) -> None:
    WRITERS["txt"](tmp_path)
    times = {}
    for depth in (4_000, 32_000, 100_000):
        page = "<html><body><p>Before.</p>" + "<div>" * depth + "deep" + "</div>" * depth + "</body></html>"
        (tmp_path / "deep.html").write_text(page)
        began = time.perf_counter()
        paths, warnings = _load(tmp_path, IngestLimits(extract_timeout=60))
        times[depth] = time.perf_counter() - began
        assert paths == ["notes.txt"] and any("deep.html" in w and "nested" in w for w in warnings), warnings
    assert (tmp_path / "deep.html").stat().st_size > 1_000_000
    assert times[100_000] < 10, times  # was past 10 minutes; measured ~1 s here, most of it the child's start


def test_nested_html_within_the_limit_is_read(tmp_path: Path) -> None:
    body = "<div>" * 200 + "<p>Cocaine use in the United Kingdom is rising, the agency said.</p>" + "</div>" * 200
    (tmp_path / "nested.html").write_text(f"<html><body>{body}</body></html>")
    (document,) = load_documents(tmp_path, limits=IN_PROCESS)
    assert "Cocaine use in the United Kingdom is rising" in document.text


def test_a_file_over_the_time_limit_is_skipped_and_the_next_still_read(tmp_path: Path) -> None:
    WRITERS["pdf"](tmp_path)
    WRITERS["docx"](tmp_path)
    WRITERS["txt"](tmp_path)
    paths, warnings = _load(tmp_path, IngestLimits(extract_timeout=0.001))
    assert paths == ["notes.txt"]  # the text file is read in-process; both parsed files ran out of time
    assert [w.split(":")[0] for w in warnings] == ["warning"] * 2
    assert all("longer than 0.001 s" in w for w in warnings) and "memo.docx" in warnings[0]
    paths, warnings = _load(tmp_path, IngestLimits(extract_timeout=60))
    assert paths == ["memo.docx", "notes.txt", "report.pdf"] and not warnings
