"""Routes beyond asking, each for a role (auth.py says who has which):

- `GET /api/audit/export?range=FIRST:LAST&format=json|csv[&user=NAME]`: the audit log as
  `threatqa audit export` writes it. An auditor gets every record (or one user's); anyone else
  only the records that name them, and a requester without a name none.
- `POST /api/reindex` (admin): build the index again from the docs folder, as `threatqa index`
  does, and answer from the new version; the reply gives counts only, never document paths.

Everyone else gets 403 naming the role needed and the roles they have.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from threatqa.audit_export import export, select
from threatqa.auth import request_access
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.errors import AuditError, ThreatQAError
from threatqa.policy import Access

log = logging.getLogger("threatqa.api")
AUDITOR, ADMIN = "auditor", "admin"


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def needs(access: Access, role: str, what: str) -> JSONResponse | None:
    """403 when `access` lacks `role` (naming it, and the roles the requester has); None when allowed."""
    if role in access.roles:
        return None
    return _refuse(403, f"{what} needs the {role} role; you have: {', '.join(sorted(access.roles)) or 'none'}")


def add_role_routes(app: FastAPI, settings: Settings, engine: Engine) -> None:
    building = threading.Lock()

    @app.get("/api/audit/export")
    def audit_export(
        request: Request,
        records: str | None = Query(None, alias="range", max_length=50, description="FIRST:LAST record numbers"),
        form: Literal["json", "csv"] = Query("json", alias="format", description="json or csv"),
        user: str | None = Query(None, max_length=1000, description="one user's records (auditors)"),
    ) -> Response:
        """Audit records as `threatqa audit export` writes them: every record for an auditor, else the
        requester's own."""
        access = request_access(settings, request.headers)
        if AUDITOR not in access.roles:
            if access.user is None:
                return _refuse(403, "exporting the audit log needs a signed-in user (your own records) or the "
                                    "auditor role (every record)")  # fmt: skip
            if user is not None and user != access.user:
                return _refuse(403, "exporting another user's records needs the auditor role")
            user = access.user
        try:
            found = select(engine.audit, records, user) if engine.audit.path.exists() else []  # none yet: empty
            body = export(found, form)
        except AuditError as exc:
            log.error("audit export failed: %s", exc)  # the log's path is for the server log
            return _refuse(503, "the audit log cannot be read now; try again later")
        except ThreatQAError as exc:
            return _refuse(422, str(exc))
        media = "application/json" if form == "json" else "text/csv; charset=utf-8"
        return Response(body, media_type=media, headers={
            "Content-Disposition": f'attachment; filename="audit.{form}"', "Cache-Control": "no-store"})  # fmt: skip

    @app.post("/api/reindex")
    def reindex(request: Request) -> Any:
        """Build the index again from the docs folder (admin); counts of what changed."""
        refused = needs(request_access(settings, request.headers), ADMIN, "re-indexing")
        if refused is not None:
            return refused
        if not building.acquire(blocking=False):
            return _refuse(409, "a re-index is already running; try again when it has finished")
        try:
            report = engine.rebuild(lambda message: log.info("reindex: %s", message))
        finally:
            building.release()
        return {"changed": report.changed, "version": report.version, "mode": report.mode,
                "documents": report.documents, "passages": report.passages, "added": len(report.added),
                "updated": len(report.updated), "removed": len(report.removed)}  # fmt: skip
