"""A user's previous questions, re-rendered from the audit log, so that they survive a reload.

The audit log has no query by user yet, so this reads records through its public `records()` and
keeps the last answers given in the UI to this user (with auth=header, the portal's user name; with
no auth or a shared token nobody is named, and the history is the unnamed users' shared one).
"""

from __future__ import annotations

from typing import Any

from threatqa.answer import answer_from_json
from threatqa.audit import AuditLog, AuditRecord
from threatqa.ui_format import escape_markdown, format_answer

HISTORY_REPLIES = 20  # previous replies shown after a reload
SCAN_RECORDS = 5000  # the most recent records looked through for them


def user_answers(audit: AuditLog, user: str | None, limit: int = HISTORY_REPLIES) -> list[AuditRecord]:
    """The user's last `limit` answers given in the UI, oldest first."""
    if not audit.path.exists():
        return []
    head = _last_seq(audit)
    records = audit.records(first=max(1, head - SCAN_RECORDS + 1)) if head else []
    mine = [r for r in records if r.kind == "answer" and r.channel == "ui" and r.user == user]
    return mine[-limit:]


def history_messages(audit: AuditLog, user: str | None, limit: int = HISTORY_REPLIES) -> list[dict[str, Any]]:
    """Chat messages (question, reply, ...) for the user's last answers."""
    messages: list[dict[str, Any]] = []
    for record in user_answers(audit, user, min(limit, HISTORY_REPLIES)):
        answer = answer_from_json(record.payload | {"id": record.id})
        filtered = bool((record.payload.get("settings") or {}).get("documents"))
        messages.append({"role": "user", "content": escape_markdown(record.question)})
        messages.append({"role": "assistant", "content": format_answer(answer, filtered=filtered)})
    return messages


def _last_seq(audit: AuditLog) -> int:
    """The newest record's number, by binary search over `records(first, last)` (a primary-key lookup
    each; records are numbered 1, 2, ... without gaps)."""

    def exists(seq: int) -> bool:
        return bool(audit.records(first=seq, last=seq))

    if not exists(1):
        return 0
    low, high = 1, 2
    while exists(high):
        low, high = high, high * 2
    while high - low > 1:  # exists(low), not exists(high)
        middle = (low + high) // 2
        low, high = (middle, high) if exists(middle) else (low, middle)
    return low
