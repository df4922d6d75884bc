"""The CLI contract: `index`, `ask` (argument, stdin, --json, text), settings, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from threatqa.cli import main

QUESTION = "How many tonnes of cocaine are consumed in the UK each year?"


def _env(tmp_path: Path) -> dict[str, str]:
    return os.environ | {"THREATQA_MODEL": "", "THREATQA_AUDIT": str(tmp_path / "audit.sqlite3")}


@pytest.fixture()
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in _env(tmp_path).items():
        if key.startswith("THREATQA_"):
            monkeypatch.setenv(key, value)
    return tmp_path


def test_index_then_ask_json(cli_env: Path, docs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = cli_env / "index"
    assert main(["index", "--docs", str(docs), "--index", str(index)]) == 0
    assert "indexed 1 document into" in capsys.readouterr().out
    assert main(["ask", "--index", str(index), "--docs", str(docs), "-k", "3", "--json", QUESTION]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    answer = json.loads(lines[0])
    assert {"question", "answered", "mode", "passages"} <= answer.keys()
    assert answer["answered"] is True and answer["mode"] == "lexical" and len(answer["passages"]) == 3
    source_text = (docs / answer["passages"][0]["source"]).read_text(encoding="utf-8")
    for rank, passage in enumerate(answer["passages"], 1):
        assert {"rank", "text", "source", "start", "end", "score", "page"} <= passage.keys()
        assert passage["rank"] == rank
        assert passage["text"] == source_text[passage["start"] : passage["end"]]
    assert "120 tonnes of cocaine" in answer["passages"][0]["text"]


def test_ask_reads_questions_from_stdin_in_one_process(cli_env: Path, docs: Path) -> None:
    questions = "Who is watching hostile states?\n\nbanana bread recipe\nWhat is ChatGPT used for?\n"
    result = subprocess.run(
        [sys.executable, "-m", "threatqa.cli", "ask", "--json", "--docs", str(docs), "--index", str(cli_env / "i")],
        input=questions, capture_output=True, text=True, env=_env(cli_env), timeout=120, check=True,
    )  # fmt: skip
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["question"] for a in answers] == [
        "Who is watching hostile states?", "banana bread recipe", "What is ChatGPT used for?"
    ]  # fmt: skip
    assert [a["answered"] for a in answers] == [True, False, True]
    assert result.stderr.count("indexed 1 document into") == 1, "the index is built once, on the first question"


def test_ask_text_output_numbers_and_cites(cli_env: Path, docs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--docs", str(docs), "--index", str(cli_env / "i"), "-k", "2", QUESTION]) == 0
    out = capsys.readouterr().out
    assert "[1] " in out and "[2] " in out and "[3] " not in out
    assert "NCA annual assessment speech 2023-07-17 (2023-07-17), para" in out and "chars " in out


def test_abstention_in_text_output(cli_env: Path, docs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--docs", str(docs), "--index", str(cli_env / "i"), "banana bread recipe"]) == 0
    assert "No passage in the documents answers this closely enough" in capsys.readouterr().out


def test_bad_setting_is_a_clear_error(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("THREATQA_TOP_K", "many")
    assert main(["ask", "question"]) == 1
    err = capsys.readouterr().err
    assert "top_k" in err and "many" in err and "Traceback" not in err


def test_missing_docs_folder(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "--docs", str(cli_env / "nowhere"), "--index", str(cli_env / "i")]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_model_mismatch_is_an_error_with_the_fix(
    cli_env: Path, docs: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    index = str(cli_env / "i")
    monkeypatch.setenv("THREATQA_MODEL", str(tiny_model))
    assert main(["index", "--docs", str(docs), "--index", index]) == 0
    same = cli_env / "same-model"
    same.symlink_to(tiny_model)  # the same model under another name: accepted
    monkeypatch.setenv("THREATQA_MODEL", str(same))
    assert main(["ask", "--index", index, "cocaine"]) == 0
    other = cli_env / "other-model"
    shutil.copytree(tiny_model, other)
    (other / "config.json").write_text((other / "config.json").read_text().replace("}", ', "layer_norm_eps": 1e-5}', 1))
    monkeypatch.setenv("THREATQA_MODEL", str(other))
    capsys.readouterr()
    assert main(["ask", "--index", index, "cocaine"]) == 1
    err = capsys.readouterr().err
    assert "threatqa index" in err and str(tiny_model) in err and "another" in err


def test_settings_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "THREATQA_MODEL=" in out and "THREATQA_PORT=" in out


@pytest.fixture()
def labelled(cli_env: Path) -> list[str]:
    """A red, a blue and a public document under a need-to-know policy; the CLI's path arguments."""
    docs = cli_env / "labelled"
    for path, team in (("red/scarlet.txt", "Scarlet"), ("blue/azure.txt", "Azure"), ("public/note.txt", "Public")):
        (docs / path).parent.mkdir(parents=True, exist_ok=True)
        (docs / path).write_text(f"Operation {team}: couriers moved cocaine through the docks.\n", encoding="utf-8")
    (cli_env / "threatqa-policy.toml").write_text(
        '[[rule]]\npaths = ["red/*"]\ngroups = ["red"]\n\n[[rule]]\npaths = ["blue/*"]\ngroups = ["blue"]\n\n'
        '[[rule]]\npaths = ["public/*"]\ngroups = ["open"]\n', encoding="utf-8",
    )  # fmt: skip
    return ["--docs", str(docs), "--index", str(cli_env / "li"), "--audit", str(cli_env / "audit.sqlite3")]


def _sources(capsys: pytest.CaptureFixture[str]) -> set[str]:
    return {p["source"] for p in json.loads(capsys.readouterr().out)["passages"]}


def test_ask_as_a_user_with_groups(labelled: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    question = "Who moved cocaine through the docks?"
    assert main(["ask", *labelled, "-k", "5", "--json", question]) == 0
    assert _sources(capsys) == {"public/note.txt"}  # no groups: what is open to all
    assert main(["ask", *labelled, "-k", "5", "--json", "--user", "rita", "--groups", "red", question]) == 0
    assert _sources(capsys) == {"red/scarlet.txt", "public/note.txt"}
    assert main(["ask", *labelled, "-k", "5", "--json", "--groups", "red, blue", question]) == 0
    assert _sources(capsys) == {"red/scarlet.txt", "blue/azure.txt", "public/note.txt"}
    assert main(["audit", "export", "--audit", labelled[-1], "--user", "rita"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["seq"], r["user"], r["payload"]["settings"]["groups"]) for r in records] == [(2, "rita", ["red"])]


def test_replay_asks_as_the_records_user_and_groups(labelled: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", *labelled, "--json", "--user", "rita", "--groups", "red", "Operation Scarlet couriers"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["passages"][0]["source"] == "red/scarlet.txt"
    assert main(["audit", "replay", *labelled, first["id"]]) == 0
    out = capsys.readouterr().out
    assert "as user rita, groups red" in out and "2 unchanged, 0 moved, 0 new, 0 gone" in out
    assert main(["audit", "export", "--audit", labelled[-1], "--range", "2:"]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert [(r["user"], r["channel"], r["payload"]["settings"]["groups"]) for r in replayed] == [
        ("rita", "replay", ["red"])
    ]
