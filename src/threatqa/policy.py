"""Need-to-know access: who may read which document (labels), and who is asking (access).

A **policy file** (TOML, `threatqa-policy.toml` beside the docs folder, or the file the `policy`
setting names), kept under version control with the documents, labels documents by path:

```toml
default = "deny"                 # documents nothing labels: "open" (anyone) or "deny" (no one)

[[rule]]
paths = ["public/*", "*.md"]     # globs on the path relative to the docs folder (`*` crosses folders)
groups = ["open"]                # "open": anyone, even a user without groups

[[rule]]
paths = ["finance/*"]
groups = ["finance", "audit"]    # readable by members of any of these groups
```

A document's **label** is, first found wins: the `groups:` line of its own front matter (a
`---` block at the top of the text: `groups: [finance, audit]`, `groups: open`); the first rule
whose glob matches its path; the policy's `default` (else the `default_label` setting, `deny`
unless set). Without a policy file every document is open, as before.

Labels are metadata, not vectors: they are computed when the engine opens an index version or
sees the policy file change, from the policy and the index's documents, and never stored in the
index, so a policy change takes effect on the next question without re-embedding. The policy's
**version** is the SHA-256 of the file's bytes and the effective default.

**Where labels are recorded.** What was in force for an answer is recorded with the answer: every
citation carries its document's label (sorted groups, `("open",)` for anyone) and the policy
version (`answer.Citation`), the answer its policy version, its audit record the asker's groups
too; the start-up log and the chat's status line name the version in force. The index manifest
records the policy in force when that version was built, with every document's label under it
(`Manifest.policy`): a record of the build, not what is enforced, since a later policy change
applies without a rebuild and the manifest keeps the build's.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from threatqa.errors import ConfigError

POLICY_FILE = "threatqa-policy.toml"
OPEN = "open"  # the group name that means anyone (reserved)
DEFAULTS = ("open", "deny")
ROLES = ("reader", "auditor", "admin")
_FRONT_MATTER = re.compile(r"---[ \t]*\n(.*?\n)---[ \t]*(?:\n|$)", re.DOTALL)
_GROUPS_LINE = re.compile(r"^groups\s*:[ \t]*(.*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Access:
    """Who is asking: the user's name (for the audit log), groups (what they may read) and roles."""

    user: str | None = None
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset({"reader"})

    @classmethod
    def of(cls, user: str | None, groups: Iterable[str] = (), roles: Iterable[str] = ("reader",)) -> Access:
        return cls(user, frozenset(g.strip() for g in groups if g.strip()), frozenset(roles))


@dataclass(frozen=True)
class Label:
    """Who may read a document: anyone (open), members of any of `groups`, or no one (neither)."""

    groups: frozenset[str] = frozenset()
    open: bool = False
    source: str = "default"  # "front matter", "rule N" (from 1), "default"

    @classmethod
    def of(cls, groups: Iterable[str], source: str) -> Label:
        names = frozenset(g.strip() for g in groups if g.strip())
        return cls(frozenset() if OPEN in names else names, OPEN in names, source)

    def readable_by(self, access: Access) -> bool:
        return self.open or bool(self.groups & access.groups)

    @property
    def name(self) -> str:
        """The label in one word: open, deny, or the groups, comma-separated and sorted."""
        return OPEN if self.open else ",".join(sorted(self.groups)) or "deny"


@dataclass(frozen=True)
class Rule:
    patterns: tuple[str, ...]
    label: Label

    def matches(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.patterns)


@dataclass(frozen=True)
class Policy:
    """A parsed policy file: rules in order, the label of documents nothing labels, and a version."""

    rules: tuple[Rule, ...]
    default: Label
    version: str
    path: Path | None = None

    def label(self, path: str, text: str = "") -> Label:
        """The label of the document at `path` (relative to the docs folder), whose text starts with `text`."""
        stated = front_matter_groups(text)
        if stated is not None:
            return Label.of(stated, "front matter")
        return next((rule.label for rule in self.rules if rule.matches(path)), self.default)


def front_matter_groups(text: str) -> list[str] | None:
    """The groups named by the `groups:` line (inline list, comma list or a YAML block list) of a text's
    front matter; None when it has no front matter or no such line."""
    front = _FRONT_MATTER.match(text)
    line = _GROUPS_LINE.search(front.group(1)) if front else None
    if line is None:
        return None
    value = line.group(1).strip("[]")
    if not value:  # a block list: "  - name" lines that follow
        rest = front.group(1)[line.end() :]  # type: ignore[union-attr]
        return [m.strip().strip("'\"") for m in re.findall(r"^\s+-\s*(.+)$", rest.split("\n\n")[0], re.MULTILINE)]
    return [part.strip().strip("'\"") for part in value.split(",")]


def policy_path(docs: Path, setting: str) -> Path:
    """The policy file: the one the setting names, else `threatqa-policy.toml` beside the docs folder."""
    return Path(setting) if setting else docs.resolve().parent / POLICY_FILE


def load_policy(path: Path, default_label: str = "deny", required: bool = False) -> Policy | None:
    """The policy in `path`; None when there is none (then every document is open). A file that was
    named (`required`) but is missing, or that cannot be read, is an error: access fails closed."""
    if default_label not in DEFAULTS:
        raise ConfigError(f"default label {default_label!r} is not one of {', '.join(DEFAULTS)}")
    try:
        data, raw = read_toml(path, "policy file")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"policy file {path} does not exist (THREATQA_POLICY)") from None
        return None
    return parse_policy(data, default_label, hashlib.sha256(raw).hexdigest(), path)


def read_toml(path: Path, what: str) -> tuple[dict[str, object], bytes]:
    """A TOML file's contents and its bytes. FileNotFoundError when it does not exist (the caller
    decides what that means); ConfigError naming `what` and the file when it cannot be read or parsed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise  # an OSError too, but the caller's to judge
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8")), raw
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def parse_policy(data: dict[str, object], default_label: str, digest: str, path: Path | None = None) -> Policy:
    """A policy from a parsed TOML table (see the module docstring)."""
    unknown = sorted(set(data) - {"default", "rule"})
    if unknown:
        raise ConfigError(f"policy {path}: unknown key(s) {', '.join(unknown)}; valid: default, rule")
    default = data.get("default", default_label)
    if default not in DEFAULTS:
        raise ConfigError(f"policy {path}: default is {default!r}; valid: {', '.join(DEFAULTS)}")
    rules = data.get("rule", [])
    if not isinstance(rules, list):
        raise ConfigError(f"policy {path}: rule must be an array of tables ([[rule]])")
    parsed = tuple(_rule(entry, number, path) for number, entry in enumerate(rules, start=1))
    version = hashlib.sha256(f"{digest}\n{default}".encode()).hexdigest()
    return Policy(parsed, Label.of([OPEN] if default == OPEN else [], "default"), version, path)


def _rule(entry: object, number: int, path: Path | None) -> Rule:
    if not isinstance(entry, dict) or set(entry) != {"paths", "groups"}:
        raise ConfigError(f"policy {path}: rule {number} must have exactly the keys paths and groups")
    values = [[v] if isinstance(v, str) else v for v in (entry["paths"], entry["groups"])]
    if not all(isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in values):
        raise ConfigError(f"policy {path}: rule {number}: paths and groups must be strings or lists of strings")
    return Rule(tuple(values[0]), Label.of(values[1], f"rule {number}"))


@dataclass(frozen=True)
class Labels:
    """Every document's label under one policy (none: everything is open), by document id."""

    policy: Policy | None
    by_document: dict[str, Label] = field(default_factory=dict)

    def readable(self, access: Access | None) -> frozenset[str] | None:
        """The ids of the documents `access` may read; None when no policy restricts anything. No
        access (None) reads what anyone may: the open documents."""
        if self.policy is None:
            return None
        who = access or Access()
        return frozenset(doc for doc, label in self.by_document.items() if label.readable_by(who))

    def key(self, access: Access | None) -> tuple[str, ...]:
        """What decides `readable`: the distinct labels `access` may read (a cache key, with the policy version)."""
        who = access or Access()
        names = sorted(label.name for label in self.distinct if label.readable_by(who))
        return (self.policy.version if self.policy else "", *names)

    @functools.cached_property
    def distinct(self) -> frozenset[Label]:
        """The distinct labels, whatever their sources (a key is worked out from these, not from every document)."""
        return frozenset(Label(label.groups, label.open) for label in self.by_document.values())


def label_documents(policy: Policy | None, documents: Iterable[tuple[str, str, str]]) -> Labels:
    """Labels of (id, path, opening text) documents under the policy."""
    if policy is None:
        return Labels(None)
    return Labels(policy, {doc_id: policy.label(path, text) for doc_id, path, text in documents})
