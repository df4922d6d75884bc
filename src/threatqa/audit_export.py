"""Audit records out of the log as JSON or CSV: one implementation for `threatqa audit export` and
`GET /api/audit/export` (the same range and format options)."""

from __future__ import annotations

import io
import json

from threatqa.answer import csv_rows, csv_writer
from threatqa.audit import AuditLog, AuditRecord
from threatqa.errors import ThreatQAError

FORMATS = ("json", "csv")


def parse_range(text: str | None) -> tuple[int | None, int | None]:
    """FIRST:LAST record numbers (either may be left out: `10:`, `:20`, `:`) as bounds."""
    first, _, last = (text or ":").partition(":")
    try:
        return _bound(first), _bound(last)
    except ValueError:
        raise ThreatQAError(f"the range takes FIRST:LAST record numbers (10:20, 10: or :20), not {text!r}") from None


def _bound(value: str) -> int | None:
    return int(value) if value.strip() else None


def select(log: AuditLog, records: str | None = None, user: str | None = None) -> list[AuditRecord]:
    """The records in the range `records` (FIRST:LAST; None: all), of `user` only when one is named."""
    return log.records(*parse_range(records), user=user)


def export(records: list[AuditRecord], form: str) -> str:
    """The records as a JSON array (`json`) or as CSV, one row per cited passage (`csv`)."""
    if form not in FORMATS:
        raise ThreatQAError(f"unknown export format {form!r}; valid: {', '.join(FORMATS)}")
    if form == "json":
        return json.dumps([r.to_json() for r in records], ensure_ascii=False, indent=1) + "\n"
    out = io.StringIO()
    writer = csv_writer(out, audit=True)
    for record in records:
        writer.writerows(csv_rows(record.payload, record.to_json()))
    return out.getvalue()
