"""The audit log's key and checkpoints: what a plain hash chain cannot prove on its own.

A hash chain shows that records fit together, but anyone who can write the file can edit a
record and recompute every later hash. So each record also carries an HMAC-SHA256 of its hash
under a secret key kept apart from the log (a file of 64 hexadecimal characters, created with
mode 0600 on first use): without the key, a rewritten record cannot be given a valid MAC.

What a MAC cannot show is a log cut short, or a rewrite by someone who has the key. For those,
`audit verify` prints a checkpoint (`SEQ:HASH`, the head record and its chain hash) for operators
to keep elsewhere; `audit verify --checkpoint SEQ:HASH` later proves records 1..SEQ unchanged
(their hashes lead to HASH) and still there.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from threatqa.errors import AuditError

GENESIS = "0" * 64
KEY_BYTES = 32


def default_key_path(log_path: Path) -> Path:
    """Where the key lives when THREATQA_AUDIT_KEY is empty: beside the log, `<log>.key`."""
    return log_path.with_name(log_path.name + ".key")


def read_key(path: Path) -> bytes | None:
    """The key in `path`; None when there is no such file."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"audit key {path} cannot be read ({exc})") from None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise AuditError(f"audit key {path} is not 64 hexadecimal characters")
    return bytes.fromhex(text)


def create_key(path: Path) -> bytes:
    """A new random key written to `path` with mode 0600 (or the key another process just wrote there)."""
    key = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        found = read_key(path)
        if found is None:
            raise AuditError(f"audit key {path} vanished while being created") from None
        return found
    except OSError as exc:
        raise AuditError(f"audit key {path} cannot be created ({exc.strerror})") from None
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key.hex() + "\n")
        out.flush()
        os.fsync(out.fileno())
    return key


def key_id(key: bytes) -> str:
    """A short name for a key, stored in the log so that a wrong key is named as such."""
    return hashlib.sha256(b"threatqa audit key id\0" + key).hexdigest()[:16]


def record_mac(key: bytes, record_hash: str) -> str:
    """HMAC-SHA256 of a record's chain hash (which covers its content, number and predecessor)."""
    return hmac.new(key, record_hash.encode("ascii"), hashlib.sha256).hexdigest()


def mac_matches(key: bytes, record_hash: str, mac: str | None) -> bool:
    return mac is not None and hmac.compare_digest(record_mac(key, record_hash), mac)


@dataclass(frozen=True)
class Checkpoint:
    """The head of the chain at some moment: record `seq` had chain hash `hash`."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        match = re.fullmatch(r"\s*(\d+):([0-9a-fA-F]{64})\s*", text)
        if match is None:
            raise AuditError(f"a checkpoint is SEQ:HASH (a record number, a colon, 64 hex characters), not {text!r}")
        return cls(int(match[1]), match[2].lower())
