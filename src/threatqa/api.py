"""The web server: JSON API and the Gradio chat UI on one FastAPI app, ready to embed in a portal.

Everything that guards the UI guards the API too, because it is ASGI middleware around both:
access (auth none / token / trusted header), CORS for the configured origins only, and a
`Content-Security-Policy: frame-ancestors` header on every response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs

# before gradio is imported: no usage analytics, no version check against the internet
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # forced: a user environment cannot turn analytics on
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# gradio keeps per-event timings for a monitoring page (10,000 events by default) that we never show
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "200")

import gradio as gr
import orjson
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import request_response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from threatqa.api_answers import add_answer_routes, checkable
from threatqa.api_roles import add_role_routes
from threatqa.auth import TOKEN_COOKIE, check_auth_settings, presented_tokens, request_access, token_access
from threatqa.config import Settings
from threatqa.engine import MAX_DOCUMENT_FILTER, MAX_K, Engine, counted
from threatqa.errors import AuditError, QuestionError, QuestionTooLong, ThreatQAError
from threatqa.ui import BUSY_TEXT, CSS, HEAD, build_ui, theme
from threatqa.verify import answers_from_json, verify_answers

log = logging.getLogger("threatqa.api")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class Busy(ThreatQAError):
    """Every worker is answering and the waiting line is full."""

    def __init__(self) -> None:
        super().__init__(BUSY_TEXT)


class Gate:
    """At most `workers` questions run at once and `queue_size` more wait; any beyond that get Busy.

    Shared by the JSON API and the UI, so that together they never overload the engine."""

    def __init__(self, workers: int, queue_size: int) -> None:
        self.capacity = workers + queue_size
        self._taken = 0
        self._lock = threading.Lock()
        self._running = threading.BoundedSemaphore(workers)
        # the API's questions run on threads of the gate's own, one for each place, handed over by the event
        # loop directly: anyio's thread pool (FastAPI's for a plain `def` route) took 0.3-0.5 ms more a
        # question on 2 cores (benchmarks/query.py, /api/ask p50 against Engine.ask inside the route)
        # (a pool starts its threads only as work comes)
        self._threads = ThreadPoolExecutor(self.capacity, thread_name_prefix="threatqa-question")

    @property
    def taken(self) -> int:
        """Questions running or waiting now."""
        return self._taken

    def _enter(self) -> None:
        with self._lock:
            if self._taken >= self.capacity:
                raise Busy()
            self._taken += 1

    def _leave(self) -> None:
        with self._lock:
            self._taken -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Run the block in a slot (waiting for one in line); Busy at once when the line is full."""
        self._enter()
        try:
            with self._running:
                yield
        finally:
            self._leave()

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` in a slot, on one of the gate's threads; Busy at once when the line is full. The place is
        given back by the thread when the work ends, even if the awaiting request is gone by then."""

        def in_slot() -> T:
            try:
                with self._running:
                    return work()
            finally:
                self._leave()

        self._enter()
        try:
            future = asyncio.get_running_loop().run_in_executor(self._threads, in_slot)
        except BaseException:
            self._leave()
            raise
        return await future


class AskRequest(BaseModel):
    """Body of POST /api/ask."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(description="The question, in plain words.")
    k: int | None = Field(None, ge=1, le=MAX_K, description="Passages to return (default: the top_k setting).")
    documents: list[Annotated[str, Field(max_length=1000)]] | None = Field(
        None, max_length=MAX_DOCUMENT_FILTER, description="Search only these documents (ids or paths)."
    )


class PlainRoute(APIRoute):
    """A path operation documented by FastAPI as any other (OpenAPI, from its declaration), but served as a
    plain Starlette endpoint, `endpoint(request) -> Response`, that reads its own body (`json_body`):
    FastAPI's request handling around it (dependencies, body parsing, validation) took 0.25 ms of
    /api/ask's fixed costs a question in flow on 2 cores (issue 17)."""

    def __init__(self, path: str, endpoint: Callable[[Request], Awaitable[Response]], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.app = request_response(endpoint)


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a PlainRoute whose JSON body is `model`."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def json_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as `model`, checked as FastAPI checks a body parameter: JSON only by its
    Content-Type (a browser's form cannot send one across sites without asking first), and problems
    raised as RequestValidationError, whose handler says them."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if not (kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))):
        raise RequestValidationError(
            [{"type": "content_type", "loc": ("body",), "msg": "send JSON, with Content-Type: application/json"}]
        )
    try:
        # Python's json, as FastAPI reads a body (it takes a lone surrogate's escape, pydantic's parser does not)
        value = json.loads(await request.body())
    except ValueError as exc:  # not JSON, or not text
        where = f" at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": f"not JSON{where}"}]) from None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError([e | {"loc": ("body", *e["loc"])} for e in errors]) from None


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app with the JSON API under /api and the chat UI at /."""
    check_auth_settings(settings)
    engine = engine or Engine.start(settings, build="stale")
    gate = Gate(settings.workers, settings.queue_size)
    app = FastAPI(title="ThreatQA", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.engine, app.state.gate = engine, gate
    _add_routes(app, settings, engine, gate)
    add_answer_routes(app, settings, engine)
    add_role_routes(app, settings, engine)
    _add_error_handlers(app)
    # last added runs first: headers on every response, then CORS (answers preflights), then access, then
    # the request size and the routes Gradio may serve; unexpected errors become a 500 inside all of them
    app.add_middleware(ContainErrors)
    app.add_middleware(GradioSurface)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_kb * 1024)
    app.add_middleware(AccessMiddleware, settings=settings)
    app.add_middleware(
        CORSMiddleware, allow_origins=settings.allowed_origins(), allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"], allow_credentials=settings.auth == "token",
    )  # fmt: skip
    app.add_middleware(SecurityHeadersMiddleware, frame_ancestors=settings.frame_ancestors)
    blocks = build_ui(engine, settings, gate)
    blocks.queue(max_size=settings.queue_size, default_concurrency_limit=settings.workers)
    # Gradio's queue looks for new UI events every 1 ms while it has none (and for progress every 10 ms): a
    # thousand wakeups a second of the event loop, 6% of a core on an idle 2-core server (a UI event now
    # waits at most QUEUE_POLL_S to start)
    blocks._queue.sleep_when_free = QUEUE_POLL_S
    blocks._queue.progress_update_sleep_when_free = PROGRESS_POLL_S
    blocks.state_session_capacity = settings.ui_sessions  # per-session UI state is kept for this many sessions
    return gr.mount_gradio_app(
        app, blocks, path="/", root_path=settings.root_path or None, show_error=False, theme=theme(), css=CSS,
        head=HEAD, footer_links=[], ssr_mode=False, enable_monitoring=False, mcp_server=False, run_history=False,
        # the UI takes no files: uploads are capped to nothing useful, and no path is served
        max_file_size=UPLOAD_LIMIT, allowed_paths=[], blocked_paths=_private_paths(settings, engine),
    )  # fmt: skip


UPLOAD_LIMIT = 1024  # bytes
QUEUE_POLL_S = 0.02  # how often Gradio's queue looks for new UI events when it has none
PROGRESS_POLL_S = 0.1  # and for progress updates (the UI reports none)
MAX_VERIFY_CITATIONS = 200  # citations checked in one /api/verify request


def _private_paths(settings: Settings, engine: Engine) -> list[str]:
    """Folders and files never served, even if a future component asked for them."""
    private = [settings.index, settings.audit, engine.audit.key_path, settings.docs]
    return [str(p.resolve()) for p in private] + (
        [str(Path(settings.model).resolve())] if settings.model and Path(settings.model).exists() else []
    )


def _add_routes(app: FastAPI, settings: Settings, engine: Engine, gate: Gate) -> None:
    async def ask(request: Request) -> Response:
        """Answer a question (an AskRequest): the same object as `threatqa ask --json`."""
        body = await json_body(request, AskRequest)
        access = request_access(settings, request.headers)
        # checked before waiting for a slot; a document filter is checked against the documents the user may
        # read, which may have to be worked out first: not on the event loop
        if body.documents is None:
            engine.check_request(body.question, body.k, access=access)
        else:
            await run_in_threadpool(engine.check_request, body.question, body.k, body.documents, access=access)

        def answer() -> bytes:
            # already plain JSON types (the object the audit record was made of): written by orjson (0.01 ms
            # for an answer citing 5 passages of 1,000 documents searched; json 0.17 ms), not walked again
            # by FastAPI's encoder (0.5 ms an answer)
            _, found = engine.ask_logged(body.question, body.k, body.documents or None, channel="api", access=access)
            return orjson.dumps(found)

        return Response(await gate.run(answer), media_type="application/json")

    app.router.add_api_route("/api/ask", ask, methods=["POST"], response_model=None, route_class_override=PlainRoute,
                             openapi_extra=documented_body(AskRequest))  # fmt: skip

    @app.post("/api/verify")
    def verify(request: Request, body: dict[str, Any] | list[Any] = Body(...)) -> Any:
        """Check saved citations (an /api/ask answer, or a list of them) against the indexed documents
        as they are now on disk (those the requester may read; an auditor: any); at most
        `MAX_VERIFY_CITATIONS` citations a request."""
        try:
            answers = answers_from_json(body, MAX_VERIFY_CITATIONS)
            with gate.slot():
                documents = checkable(engine, request_access(settings, request.headers))
                findings = verify_answers(answers, settings.docs, documents)
        except Busy:
            raise
        except ThreatQAError as exc:
            return _error(422, str(exc))
        return {
            "ok": bool(findings) and all(f.ok for f in findings),
            "findings": [asdict(f) | {"ok": f.ok} for f in findings],
        }

    @app.get("/api/documents")
    def documents(request: Request) -> list[dict[str, Any]]:
        """Every indexed document the requester may read: id, title, date, path, passages, sha256."""
        return [
            {"id": d.id, "title": d.title, "date": d.date, "path": d.path, "passages": d.passages, "sha256": d.sha256}
            for d in engine.documents(request_access(settings, request.headers))
        ]

    @app.get("/api/health")
    def health(request: Request) -> JSONResponse:
        """Liveness and what runs: mode, counts (of what the requester may read), index manifest version,
        model; 503 with the problem when questions cannot be answered (the audit log cannot take records,
        the index is damaged)."""
        status = engine.status(request_access(settings, request.headers))
        problems = [p for p in (engine.audit.check(), engine.index.damage) if p]
        body = {
            "status": "failing" if problems else "ok", "problems": problems, "mode": status.mode,
            "documents": status.documents, "passages": status.passages, "index_version": status.index_version,
            "model": status.model,
        }  # fmt: skip
        return JSONResponse(body, status_code=503 if problems else 200)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Users see the error's message; never a traceback or a file path."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body')[:80] or 'body'}: {err['msg']}" for err in errors[:5]
        )  # a few problems, never the input echoed back
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        return _error(422, f"invalid request: {problems}{more}")

    @app.exception_handler(QuestionTooLong)
    async def too_long(request: Request, exc: QuestionTooLong) -> JSONResponse:
        return _error(413, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": "5"})

    @app.exception_handler(QuestionError)
    async def bad_question(request: Request, exc: QuestionError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(AuditError)
    async def unrecorded(request: Request, exc: AuditError) -> JSONResponse:
        log.error("audit log write failed: %s", exc)  # the path goes to the server log, not to the user
        return _error(503, "the audit log could not be written, so the question was not answered; try again later")

    @app.exception_handler(ThreatQAError)
    async def failed(request: Request, exc: ThreatQAError) -> JSONResponse:
        log.error("request failed: %s", exc)
        return _error(500, str(exc))


class AccessMiddleware:
    """Lets a request through only when the auth setting allows it; the same check for UI and API.

    token: `Authorization: Bearer <token>`, or the cookie that `?token=<token>` on any page sets
    (browsers cannot add headers to an iframe or to the UI's own requests); the static token or a
    user's token from the token file (auth.py says who each one is).
    header: the portal's proxy sets the user name in `auth_header`; requests without it are refused.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.settings.auth == "none":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.settings.auth == "header":
            if headers.get(self.settings.auth_header, "").strip():
                await self.app(scope, receive, send)
                return
            await self._refuse(scope, receive, send, f"sign in through the portal (no {self.settings.auth_header})")
            return
        query_token = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [""])[0]
        if self._valid(query_token):
            # this request's routes see the token as its bearer token (they read who is asking from headers)
            scope = _with_bearer(scope, query_token)
            await self.app(scope, receive, _setting_cookie(send, scope, query_token))
        elif any(self._valid(token) for token in presented_tokens(headers)):
            await self.app(scope, receive, send)
        else:
            await self._refuse(scope, receive, send, "a valid token is needed (Authorization: Bearer <token>)")

    def _valid(self, token: str) -> bool:
        return token_access(self.settings, token) is not None

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, message: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = {"WWW-Authenticate": "Bearer"} if self.settings.auth == "token" else None
        await _error(401, message, headers)(scope, receive, send)


def _with_bearer(scope: Scope, token: str) -> Scope:
    """The scope with `Authorization: Bearer <token>` in place of any authorization header it had."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"authorization"]
    return {**scope, "headers": [*headers, (b"authorization", f"Bearer {token}".encode("latin-1"))]}


def _setting_cookie(send: Send, scope: Scope, token: str) -> Send:
    """Wrap `send` so the response stores the token in an HttpOnly cookie for the page's later requests."""
    secure = scope.get("scheme") == "https" or Headers(scope=scope).get("x-forwarded-proto") == "https"
    # a portal on another site frames us: only SameSite=None cookies reach a third-party frame (needs https),
    # and where third-party cookies are blocked only a Partitioned one (CHIPS), kept apart per top-level site
    attributes = "; Secure; SameSite=None; Partitioned" if secure else "; SameSite=Lax"
    path = scope.get("root_path") or "/"

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message).append(
                "set-cookie", f"{TOKEN_COOKIE}={token}; Path={path}; HttpOnly{attributes}"
            )
        await send(message)

    return wrapped


class SecurityHeadersMiddleware:
    """CSP frame-ancestors (only the configured portal origins may frame the app) on every response."""

    def __init__(self, app: ASGIApp, frame_ancestors: str) -> None:
        self.app = app
        self.policy = "frame-ancestors " + (frame_ancestors.strip() or "'none'")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = self.policy
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "same-origin"
            await send(message)

        await self.app(scope, receive, with_headers)


# What the chat page and gradio_client need from Gradio; every other Gradio route (file fetching by URL,
# uploads, run history, proxies, streaming, vibe editing, profiling, and whatever a later version adds) is
# answered 404 here, so the server fetches nothing and keeps no file on anyone's behalf.
GRADIO_PATHS = frozenset(
    {"/", "/config", "/theme.css", "/favicon.ico", "/manifest.json", "/gradio_api/info", "/gradio_api/queue/join",
     "/gradio_api/queue/data", "/gradio_api/cancel", "/gradio_api/reset", "/gradio_api/startup-events"}
)  # fmt: skip
GRADIO_PREFIXES = ("/assets/", "/static/", "/gradio_api/heartbeat/", "/gradio_api/call/")
OWN_PREFIX = "/api/"
ANSWER_PREFIX = "/answers/"  # permalinks, exports and passages in context (api_answers), ours as well


class GradioSurface:
    """Only the routes listed above reach Gradio; our own /api routes pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path, root = scope["path"], scope.get("root_path", "")
            path = path[len(root) :] if root and path.startswith(root) else path
            ours = path.startswith((OWN_PREFIX, ANSWER_PREFIX))
            allowed = ours or path.rstrip("/") in GRADIO_PATHS or path in GRADIO_PATHS
            if not (allowed or path.startswith(GRADIO_PREFIXES)):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await _error(404, "not found")(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Sent:
    """`send`, noting whether the response has started (after that, no other response can be sent)."""

    def __init__(self, send: Send) -> None:
        self.send, self.started = send, False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


class _TooLarge(BaseException):
    """Raised inside `receive` to stop a handler that is reading a body over the limit (BaseException:
    no handler on the way may turn it into an ordinary error response)."""


class BodyLimit:
    """413 for a request body over `max_bytes`, decided before anything parses it: by Content-Length
    when given, else while the body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refuse = _error(
            413, f"the request body is over the {self.max_bytes // 1024} KB limit (THREATQA_MAX_REQUEST_KB)"
        )
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await refuse(scope, receive, send)
            return
        received, sent = 0, _Sent(send)

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, sent)
        except _TooLarge:
            if not sent.started:
                await refuse(scope, receive, send)


class ContainErrors:
    """An unexpected error is logged and answered with a plain 500, and the connection stays open
    (Starlette's own last-resort handler re-raises, and the server then drops the keep-alive connection)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = _Sent(send)
        try:
            await self.app(scope, receive, sent)
        except Exception:
            log.exception("unexpected error")
            if not sent.started:
                await _error(500, "internal error; the server log has the details")(scope, receive, send)


def serve(settings: Settings) -> None:
    """Start the engine (building the index if needed), say what runs, and serve until interrupted."""
    import faulthandler

    import uvicorn

    # a memory-mapped index file truncated under a running server ends it with SIGBUS: say so, with the stack
    faulthandler.enable()
    engine = Engine.start(settings, build="stale")
    app = create_app(settings, engine)
    status = engine.status()
    print(
        f"threatqa: {status.mode} mode (model: {status.model or 'none'}), {counted(status.documents, 'document')}, "
        f"{counted(status.passages, 'passage')} "
        f"(index {status.index_version}); serving on http://{settings.host}:{settings.port}{settings.root_path}/",
        flush=True,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, root_path=settings.root_path, log_level="warning")
