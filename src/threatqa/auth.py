"""Who is asking: the one answer, from a request's headers, for the JSON API and the chat UI alike.

auth=header: the portal's trusted proxy names the user (`auth_header`), their groups
(`auth_groups_header`) and their roles (`auth_roles_header`, comma-separated; names other than
reader, auditor and admin are the portal's own and are ignored; none known: reader).

auth=token: `Authorization: Bearer <token>`, or the cookie that `?token=<token>` sets. The static
`auth_token` is a shared key with no name: reader, no groups. Personal tokens live in the token
file (`auth_tokens`), which holds only each token's SHA-256, with the user it names:

```toml
[[token]]
user = "alice"
groups = ["finance", "audit"]
roles = ["reader", "auditor"]    # optional; default ["reader"]
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
```

Tokens are 32 random bytes (`threatqa token add`), so a plain hash is as good as a slow one: no
dictionary can guess them. The file is read again when it changes, so a token added or removed
applies from the next request; a file that cannot be read or parsed refuses every token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

from threatqa.config import Settings
from threatqa.errors import ConfigError
from threatqa.policy import ROLES, Access, read_toml

TOKEN_COOKIE = "threatqa_token"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_KEYS = {"user", "groups", "roles", "sha256"}


@dataclass(frozen=True)
class Tokens:
    """The token file, parsed: each token's SHA-256 (hex) to the access it grants."""

    by_digest: Mapping[str, Access] = field(default_factory=dict)
    path: Path | None = None

    def access(self, token: str) -> Access | None:
        """The access `token` grants; None when the file holds no such token. Looked up by the token's
        digest, so the lookup's timing tells nothing about any stored token."""
        return self.by_digest.get(token_digest(token)) if token else None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def load_tokens(path: Path) -> Tokens:
    """The token file at `path`; ConfigError naming the file and the problem when it is missing or bad."""
    try:
        data, _raw = read_toml(path, "token file")
    except FileNotFoundError:
        raise ConfigError(
            f"token file {path} does not exist (THREATQA_AUTH_TOKENS); `threatqa token add` creates it"
        ) from None
    return parse_tokens(data, path)


def parse_tokens(data: dict[str, object], path: Path | None = None) -> Tokens:
    """Tokens from a parsed TOML table (see the module docstring)."""
    unknown = sorted(set(data) - {"token"})
    if unknown:
        raise ConfigError(f"token file {path}: unknown key(s) {', '.join(unknown)}; valid: token")
    entries = data.get("token", [])
    if not isinstance(entries, list):
        raise ConfigError(f"token file {path}: token must be an array of tables ([[token]])")
    found: dict[str, Access] = {}
    for number, entry in enumerate(entries, start=1):
        digest, access = _entry(entry, number, path)
        if digest in found:
            raise ConfigError(f"token file {path}: token {number} has the same sha256 as an earlier one "
                              f"(user {found[digest].user!r}); each token must be different")  # fmt: skip
        found[digest] = access
    return Tokens(found, path)


def _entry(entry: object, number: int, path: Path | None) -> tuple[str, Access]:
    where = f"token file {path}: token {number}"
    if not isinstance(entry, dict) or not {"user", "sha256"} <= set(entry) <= _KEYS:
        keys = sorted(entry) if isinstance(entry, dict) else []
        raise ConfigError(f"{where} has keys {keys}; needs user and sha256, may have groups and roles")
    user, digest = entry["user"], entry["sha256"]
    if not isinstance(user, str) or not user.strip():
        raise ConfigError(f"{where}: user must be a non-empty string, not {user!r}")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ConfigError(f"{where} (user {user!r}): sha256 must be 64 lowercase hex characters")
    groups = _names(entry.get("groups", []), "groups", where)
    roles = _names(entry.get("roles", ["reader"]), "roles", where)
    problem = _roles_problem(roles)
    if problem:
        raise ConfigError(f"{where} (user {user!r}): {problem}")
    return digest, Access.of(user.strip(), groups, roles)


def _names(value: object, key: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings, not {value!r}")
    return value


def _roles_problem(roles: Iterable[str]) -> str | None:
    """What is wrong with a list of roles (unknown names, or none at all), or None."""
    given = set(roles)
    bad = sorted(given - set(ROLES))
    if not bad and given:
        return None
    said = f"unknown role(s) {', '.join(map(repr, bad))}" if bad else "no role given"
    return f"{said}; valid: {', '.join(ROLES)}"


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe (it may travel in `?token=`)."""
    return secrets.token_urlsafe(32)


def add_token(path: Path, user: str, groups: Iterable[str] = (), roles: Iterable[str] = ("reader",)) -> str:
    """Issue a token for `user` and store only its SHA-256 in the token file (created with mode 0600,
    replaced atomically); returns the token, which is never stored: show it to the user once."""
    access = Access.of(user.strip(), groups, roles)
    if not access.user or any(c in user for c in "\n\r"):
        raise ConfigError(f"user must be a non-empty name on one line, not {user!r}")
    problem = _roles_problem(access.roles)
    if problem:
        raise ConfigError(problem)
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if existing:
        load_tokens(path)  # a bad file is reported, not extended
    token = new_token()
    entry = "\n".join([
        "[[token]]", f"user = {_toml_string(access.user)}",
        f"groups = [{', '.join(_toml_string(g) for g in sorted(access.groups))}]",
        f"roles = [{', '.join(_toml_string(r) for r in sorted(access.roles))}]", f'sha256 = "{token_digest(token)}"',
    ])  # fmt: skip
    before = existing.rstrip("\n") + "\n\n" if existing.strip() else ""
    _write_private(path, before + entry + "\n")
    return token


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string (ASCII, escaped) is a TOML basic string


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only, atomically: a reader sees the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class _TokenFiles:
    """Token files read once and again only when they change (mtime, size, inode)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: dict[Path, tuple[tuple[int, ...], Tokens]] = {}

    def get(self, path: Path) -> Tokens:
        try:
            found = path.stat()
        except FileNotFoundError:
            raise ConfigError(f"token file {path} does not exist (THREATQA_AUTH_TOKENS)") from None
        stamp = (found.st_mtime_ns, found.st_size, found.st_ino)
        kept = self._read.get(path)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        with self._lock:
            tokens = load_tokens(path)
            self._read[path] = (stamp, tokens)
            return tokens


_FILES = _TokenFiles()


def tokens(settings: Settings) -> Tokens:
    """The token file the settings name, as it is now (empty when none is named)."""
    return _FILES.get(Path(settings.auth_tokens)) if settings.auth_tokens else Tokens()


def check_auth_settings(settings: Settings) -> None:
    """Refuse, at start, settings that could not let anyone in or that name a bad token file."""
    if settings.auth == "token" and not (settings.auth_token or settings.auth_tokens):
        raise ConfigError("auth=token needs a token: set THREATQA_AUTH_TOKEN or THREATQA_AUTH_TOKENS (a token file)")
    if settings.auth == "header" and not settings.auth_header.strip():
        raise ConfigError("auth=header needs a header name: set THREATQA_AUTH_HEADER")
    if settings.auth == "token" and settings.auth_tokens:
        tokens(settings)


def token_access(settings: Settings, token: str) -> Access | None:
    """The access a presented token grants under auth=token: the static token's (no name, reader, no
    groups) or its user's from the token file; None when it is no valid token."""
    if not token:
        return None
    if settings.auth_token and secrets.compare_digest(token.encode(), settings.auth_token.encode()):
        return Access()
    return tokens(settings).access(token)


def presented_tokens(headers: Mapping[str, str]) -> list[str]:
    """The tokens a request presents: its bearer token, then its cookie's."""
    scheme, _, bearer = (_header(headers, "authorization") or "").partition(" ")
    cookies: SimpleCookie = SimpleCookie()
    with contextlib.suppress(Exception):  # a malformed cookie header is simply no token
        cookies.load(_header(headers, "cookie") or "")
    cookie = cookies[TOKEN_COOKIE].value if TOKEN_COOKIE in cookies else ""
    return [t for t in ((bearer.strip() if scheme.lower() == "bearer" else ""), cookie) if t]


def request_access(settings: Settings, headers: Mapping[str, str] | None) -> Access:
    """Who is asking (the access middleware has already let the request in): a user without a name,
    groups or more than the reader role when nothing says otherwise."""
    if headers is None or settings.auth == "none":
        return Access()
    if settings.auth == "token":
        found = (token_access(settings, token) for token in presented_tokens(headers))
        return next((access for access in found if access is not None), Access())
    user = (_header(headers, settings.auth_header) or "").strip() or None
    groups = (_header(headers, settings.auth_groups_header) or "").split(",")
    said = {r.strip() for r in (_header(headers, settings.auth_roles_header) or "").split(",")}
    roles = sorted(said & set(ROLES)) or ["reader"]  # the portal's other roles are not ours
    return Access.of(user, groups, roles)


def request_user(settings: Settings, headers: Mapping[str, str] | None) -> str | None:
    """The requester's name for the audit log (None: no name)."""
    return request_access(settings, headers).user


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name.lower()) or headers.get(name)
