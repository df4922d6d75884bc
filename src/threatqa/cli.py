"""Command line: parse arguments, call the core, print. No retrieval logic lives here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from threatqa import __version__
from threatqa.answer import csv_rows, csv_writer, format_text
from threatqa.audit import AuditLog, AuditRecord, Checkpoint
from threatqa.audit_export import export, parse_range, select
from threatqa.auth import add_token
from threatqa.config import Settings, settings_markdown
from threatqa.engine import Engine, describe_build, index_folder, try_embedder
from threatqa.errors import ConfigError, ThreatQAError
from threatqa.policy import ROLES, Access
from threatqa.verify import answers_from_json, compare_answers, format_findings, format_replay, verify_answers


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except ThreatQAError as exc:
        print(f"threatqa: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threatqa", description="Answer questions about threat assessments with exact, cited passages."
    )
    parser.add_argument("--version", action="version", version=f"threatqa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    index = sub.add_parser("index", help="build or update the index from a docs folder")
    _add_paths(index, audit=False)
    index.add_argument(
        "--lexical", action="store_true", help="build without dense vectors (replaces a hybrid index's vectors)"
    )
    index.set_defaults(handler=_cmd_index)

    ask = sub.add_parser("ask", help="answer questions with cited passages")
    _add_paths(ask)
    ask.add_argument("-k", type=int, default=None, help="passages per question (default: THREATQA_TOP_K or 5)")
    ask.add_argument("--json", action="store_true", help="one JSON object per question per line")
    ask.add_argument("--csv", action="store_true", help="one CSV row per cited passage")
    ask.add_argument(
        "--document", action="append", dest="documents", metavar="PATH_OR_ID", help="search only these documents"
    )
    ask.add_argument("--user", default=None, help="ask as this user (named in the audit log)")
    ask.add_argument(
        "--groups", default=None, metavar="A,B",
        help="ask with these groups: under a need-to-know policy only the documents they may read are searched "
        "(default: none, so only documents open to all)",
    )  # fmt: skip
    ask.add_argument("question", nargs="?", help="the question; without it, one question per line from stdin")
    ask.set_defaults(handler=_cmd_ask)

    evaluate = sub.add_parser("eval", help="retrieval accuracy on the evaluation sets, beside plain BM25")
    evaluate.add_argument("--eval-dir", type=Path, default=None, help="folder with the evaluation data")
    evaluate.add_argument("--json", action="store_true", help="print the figures as JSON")
    evaluate.set_defaults(handler=_cmd_eval)

    serve = sub.add_parser("serve", help="start the web server: chat UI at /, JSON API under /api")
    _add_paths(serve)
    serve.add_argument("--host", default=None, help="address to listen on (default: THREATQA_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to listen on (default: THREATQA_PORT or 7860)")
    serve.set_defaults(handler=_cmd_serve)

    verify = sub.add_parser("verify", help="check saved citations against the documents as they are now")
    _add_paths(verify, audit=False)
    verify.add_argument("file", nargs="?", type=Path, help="a saved answer (`ask --json` output or /api/ask JSON)")
    _add_range(verify)
    verify.set_defaults(handler=_cmd_verify)

    audit = sub.add_parser("audit", help="the audit log: check its hash chain, replay or export records")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    chain = audit_sub.add_parser(
        "verify", help="check the hash chain and MACs, and checkpoints; names the first broken record"
    )
    chain.add_argument("--audit", type=Path, default=None, help="audit log file (default: THREATQA_AUDIT)")
    chain.add_argument("--key", type=Path, default=None, help="the log's key file (default: THREATQA_AUDIT_KEY)")
    chain.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="SEQ:HASH",
        help="a checkpoint printed by an earlier verify: records 1..SEQ must be unchanged and there",
    )
    chain.add_argument(
        "--without-key",
        action="store_true",
        help="check hashes and checkpoints only (for a reader who does not hold the key)",
    )
    chain.set_defaults(handler=_cmd_audit_verify)
    migrate = audit_sub.add_parser("migrate", help="give an older log MACs and lean records now, then compact it")
    migrate.add_argument("--audit", type=Path, default=None, help="audit log file (default: THREATQA_AUDIT)")
    migrate.add_argument("--key", type=Path, default=None, help="the log's key file (default: THREATQA_AUDIT_KEY)")
    migrate.set_defaults(handler=_cmd_audit_migrate)
    replay = audit_sub.add_parser(
        "replay",
        help="ask a logged question again, as its user with the groups the record names, and compare the citations",
    )
    _add_paths(replay)
    replay.add_argument("record", help="the record id (or its number)")
    replay.set_defaults(handler=_cmd_audit_replay)
    export = audit_sub.add_parser(
        "export", help="export a range of records as JSON or CSV (with file access to the log: the auditor's tool)"
    )
    _add_range(export)
    export.add_argument("--format", choices=("json", "csv"), default="json", help="output format")
    export.add_argument("--user", default=None, help="only the records of this user")
    export.set_defaults(handler=_cmd_audit_export)

    token = sub.add_parser("token", help="personal tokens for auth=token (the token file holds only their hashes)")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    add = token_sub.add_parser("add", help="issue a token for a user: printed once, only its SHA-256 is stored")
    add.add_argument("user", help="the user's name (the audit log names it)")
    add.add_argument("--groups", default="", metavar="A,B", help="groups the user reads under a need-to-know policy")
    add.add_argument("--roles", default="reader", metavar="R,S", help=f"roles: {', '.join(ROLES)} (default: reader)")
    add.add_argument("--file", type=Path, default=None, help="the token file (default: THREATQA_AUTH_TOKENS)")
    add.set_defaults(handler=_cmd_token_add)

    settings = sub.add_parser("settings", help="list every setting with its environment variable")
    settings.add_argument("--markdown", action="store_true", help="as the README's markdown table")
    settings.set_defaults(handler=_cmd_settings)
    return parser


def _add_paths(parser: argparse.ArgumentParser, audit: bool = True) -> None:
    parser.add_argument("--docs", type=Path, default=None, help="documents folder (default: ./docs)")
    parser.add_argument("--index", type=Path, default=None, help="index folder (default: ./index)")
    if audit:
        parser.add_argument("--audit", type=Path, default=None, help="audit log file (default: THREATQA_AUDIT)")


def _add_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audit", type=Path, default=None, help="audit log file (default: THREATQA_AUDIT)")
    parser.add_argument("--range", dest="records", default=None, metavar="FIRST:LAST",
                        help="audit records by number, e.g. 10:20, 10: or :20")  # fmt: skip


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    return Settings.load(
        docs=getattr(args, "docs", None), index=getattr(args, "index", None), audit=getattr(args, "audit", None),
        **extra,
    )  # fmt: skip


def _cmd_index(args: argparse.Namespace) -> int:
    settings = _settings(args)
    log = lambda m: print(f"threatqa: {m}", file=sys.stderr, flush=True)  # noqa: E731
    embedder = None if args.lexical else try_embedder(settings, log)
    report = index_folder(settings, embedder, log, lexical=args.lexical)
    print(describe_build(report))
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    settings = _settings(args, top_k=args.k)
    engine = Engine.start(settings, build="missing")
    writer = csv_writer(sys.stdout) if args.csv else None
    access = None if args.user is None and args.groups is None else Access.of(args.user, _names(args.groups))
    for question in _questions(args.question):
        answer = engine.ask(question, settings.top_k, args.documents, access=access)
        if writer is not None:
            writer.writerows(csv_rows(answer.to_json()))
        elif args.json:
            print(json.dumps(answer.to_json(), ensure_ascii=False), flush=True)
        else:
            print(format_text(answer) + "\n", flush=True)
    return 0


def _names(given: str | None) -> list[str]:
    return [name.strip() for name in (given or "").split(",") if name.strip()]


def _questions(given: str | None) -> Iterator[str]:
    if given is not None:
        yield given
        return
    for line in sys.stdin:
        if line.strip():
            yield line.rstrip("\n")


def _cmd_eval(args: argparse.Namespace) -> int:
    from threatqa.evaluation import default_eval_dir, format_report, run_evaluation

    report = run_evaluation(args.eval_dir or default_eval_dir(), Settings.load())
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from threatqa.api import serve  # the web stack loads only for this command

    serve(_settings(args, host=args.host, port=args.port))
    return 0


def _records(args: argparse.Namespace, settings: Settings) -> list[AuditRecord]:
    return AuditLog(settings.audit).records(*parse_range(args.records))


def _cmd_verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.file is None and args.records is None:
        raise ThreatQAError("give a saved answer FILE, or --range FIRST:LAST of the audit log")
    answers = []
    if args.file is not None:
        answers += answers_from_json(_read_json(args.file))
    if args.records is not None:
        answers += [r.payload for r in _records(args, settings) if r.kind == "answer"]
    findings = verify_answers(answers, settings.docs)
    print(format_findings(findings))
    return 0 if findings and all(f.ok for f in findings) else 1


def _read_json(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ThreatQAError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:  # `ask --json` with several questions: one object per line
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ThreatQAError(f"{path} is not JSON or JSON lines ({exc})") from None


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    log = AuditLog(settings.audit, args.key or settings.audit_key)
    checkpoints = [Checkpoint.parse(value) for value in args.checkpoint]
    report = log.verify_chain(checkpoints, use_key=not args.without_key)
    for note in report.notes:
        print(f"note: {note}")
    if not report.ok:
        where = f"record {report.broken_seq}" + (f" (id {report.broken_id})" if report.broken_id else "")
        print(f"audit log {log.path}: chain broken at {where}: {report.reason}")
        return 1
    how = "hashes and MACs" if report.keyed else "hashes"
    proved = f"; checkpoints {', '.join(str(c.seq) for c in checkpoints)} hold" if checkpoints else ""
    print(f"audit log {log.path}: {report.checked} records, chain intact ({how} checked{proved})")
    print(f"checkpoint: {report.head}")
    print("keep it elsewhere; `threatqa audit verify --checkpoint <it>` later proves these records unchanged")
    return 0


def _cmd_audit_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    log = AuditLog(settings.audit, args.key or settings.audit_key)
    before, after = log.migrate()
    print(f"audit log {log.path}: {log.verify_chain().checked} records with MACs; {before:,} -> {after:,} bytes")
    return 0


def _cmd_audit_replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    record = AuditLog(settings.audit).get(args.record)
    if record.kind != "answer":
        raise ThreatQAError(f"record {args.record} is {record.kind!r}, not an answer")
    old = record.payload
    engine = Engine.start(settings, build="never")
    asked = old.get("settings", {})
    access = Access.of(record.user, asked.get("groups", []))  # as asked then: no more than the record's groups
    new = engine.ask(
        record.question, asked.get("k"), asked.get("documents") or None, channel="replay", access=access
    ).to_json()
    print(f"replay of record {record.seq} ({record.time}): {record.question}")
    print(f"as user {record.user or '(none)'}, groups {', '.join(sorted(access.groups)) or '(none)'}")
    print(f"index then {old['index_version']}, now {new['index_version']}")
    rows = compare_answers(old, new)
    print(format_replay(rows))
    return 0


def _cmd_audit_export(args: argparse.Namespace) -> int:
    records = select(AuditLog(_settings(args).audit), args.records, args.user)
    sys.stdout.write(export(records, args.format))
    return 0


def _cmd_token_add(args: argparse.Namespace) -> int:
    configured = Settings.load().auth_tokens
    path = args.file or (Path(configured) if configured else None)
    if path is None:
        raise ConfigError("name the token file: --file PATH or THREATQA_AUTH_TOKENS")
    token = add_token(path, args.user, _names(args.groups), _names(args.roles))
    print(token)
    print(f"threatqa: token for {args.user} added to {path} (only its SHA-256 is kept: this is the one time "
          "it is shown)", file=sys.stderr)  # fmt: skip
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_markdown())
        return 0
    current = Settings.load()
    for name, field in Settings.model_fields.items():
        print(f"THREATQA_{name.upper()}={getattr(current, name)}\n    {field.description}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
