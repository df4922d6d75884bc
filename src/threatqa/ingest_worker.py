"""Extraction under a time limit (part of the ingest stage).

Third-party parsers (HTML, PDF, DOCX) run in one child process, reused from file to file, so a
file that makes a parser run too long (or crash) can be stopped without stopping the build:
when a file takes longer than the limit, the child is killed, the file is skipped with a warning
and the next file gets a fresh child. The child is a fresh interpreter (never forked from a
process that holds model threads) that imports only the ingest modules, not the threatqa
package's `__init__` (which loads the model stack): it starts in about half a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from threatqa.errors import IngestError
from threatqa.ingest_formats import Extracted, extract


class Extractor:
    """Runs `ingest_formats.extract` in a child process with a per-file time limit; with
    `timeout` 0 or less, in this process without a limit."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._process: Any = None
        self._conn: _Duplex | None = None

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def extract(self, suffix: str, data: bytes) -> Extracted:
        if self.timeout <= 0:
            return extract(suffix, data)
        conn = self._connection()
        conn.send((suffix, data))
        if not conn.poll(self.timeout):
            self._kill()
            raise IngestError(f"extraction took longer than {self.timeout:g} s (THREATQA_EXTRACT_TIMEOUT)")
        try:
            status, payload = conn.recv()
        except (EOFError, OSError):
            code = self._process.poll() if self._process is not None else None
            self._kill()
            raise IngestError(f"the parser crashed (exit code {code})") from None
        if status == "error":
            raise IngestError(payload)
        return payload

    def _connection(self) -> _Duplex:
        if self._conn is None or self._process is None or self._process.poll() is not None:
            self._kill()
            self._process, self._conn = _start_child()
        return self._conn

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(5)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None

    def close(self) -> None:
        if self._conn is not None and self._process is not None and self._process.poll() is None:
            try:
                self._conn.send(None)
                self._process.wait(2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()


_CHILD = """
import sys, types
package = types.ModuleType("threatqa")
package.__path__ = [sys.argv[1]]
sys.modules["threatqa"] = package
from threatqa.ingest_worker import serve
serve(int(sys.argv[2]), int(sys.argv[3]))
"""


def _start_child() -> tuple[subprocess.Popen[bytes], _Duplex]:
    """A fresh interpreter running `serve`, and a connection to it over two pipes."""
    child_in, parent_out = os.pipe()
    parent_in, child_out = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(Path(__file__).parent), str(child_in), str(child_out)],
        pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL, close_fds=True,
    )  # fmt: skip
    os.close(child_in)
    os.close(child_out)
    return process, _Duplex(Connection(parent_in, writable=False), Connection(parent_out, readable=False))


class _Duplex:
    """Two one-way pipe connections used as one."""

    def __init__(self, incoming: Connection, outgoing: Connection) -> None:
        self.incoming, self.outgoing = incoming, outgoing

    def send(self, obj: object) -> None:
        self.outgoing.send(obj)

    def recv(self) -> Any:
        return self.incoming.recv()

    def poll(self, timeout: float) -> bool:
        return self.incoming.poll(timeout)

    def close(self) -> None:
        self.incoming.close()
        self.outgoing.close()


def serve(read_fd: int, write_fd: int) -> None:
    """The child's loop: (suffix, bytes) in, ("ok", Extracted) or ("error", message) out."""
    _serve(_Duplex(Connection(read_fd, writable=False), Connection(write_fd, readable=False)))


def _serve(conn: Any) -> None:
    """The child's loop: (suffix, bytes) in, ("ok", Extracted) or ("error", message) out."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            conn.send(("ok", extract(*job)))
        except IngestError as exc:
            conn.send(("error", str(exc)))
        except Exception as exc:
            conn.send(("error", f"cannot parse the file ({type(exc).__name__}: {str(exc)[:200]})"))
