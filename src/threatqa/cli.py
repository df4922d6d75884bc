"""Command line: parse arguments, call the core, print. No retrieval logic lives here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from threatqa import __version__
from threatqa.answer import format_text
from threatqa.config import Settings, settings_markdown
from threatqa.engine import Engine, _try_embedder, describe_build, index_folder
from threatqa.errors import ThreatQAError


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threatqa", description="Answer questions about threat assessments with exact, cited passages."
    )
    parser.add_argument("--version", action="version", version=f"threatqa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    index = sub.add_parser("index", help="build or update the index from a docs folder")
    _add_paths(index)
    index.set_defaults(handler=_cmd_index)

    ask = sub.add_parser("ask", help="answer questions with cited passages")
    _add_paths(ask)
    ask.add_argument("-k", type=int, default=None, help="passages per question (default: THREATQA_TOP_K or 5)")
    ask.add_argument("--json", action="store_true", help="one JSON object per question per line")
    ask.add_argument(
        "--document", action="append", dest="documents", metavar="PATH_OR_ID", help="search only these documents"
    )
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

    settings = sub.add_parser("settings", help="list every setting with its environment variable")
    settings.add_argument("--markdown", action="store_true", help="as the README's markdown table")
    settings.set_defaults(handler=_cmd_settings)
    return parser


def _add_paths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", type=Path, default=None, help="documents folder (default: ./docs)")
    parser.add_argument("--index", type=Path, default=None, help="index folder (default: ./index)")


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    return Settings.load(docs=getattr(args, "docs", None), index=getattr(args, "index", None), **extra)


def _cmd_index(args: argparse.Namespace) -> int:
    settings = _settings(args)
    embedder = _try_embedder(settings, lambda m: print(f"threatqa: {m}", file=sys.stderr))
    report = index_folder(settings, embedder)
    print(describe_build(report))
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    settings = _settings(args, top_k=args.k)
    engine = Engine.start(settings, build="missing")
    for question in _questions(args.question):
        answer = engine.ask(question, settings.top_k, args.documents)
        if args.json:
            print(json.dumps(answer.to_json(), ensure_ascii=False), flush=True)
        else:
            print(format_text(answer) + "\n", flush=True)
    return 0


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
