"""Duplicate, near-duplicate, leakage and conflicting-label checks, and the dedup primitives under them."""

import random
from pathlib import Path

import datasets
import numpy as np
import pytest

import tunelab.data.checks.dedup  # noqa: F401  (registers the checks)
from tunelab.data import dedup
from tunelab.data.doctor import CHECKS, DoctorContext, Finding

AMAZON = Path("/work/shared/datasets/sentiment_amazon_reviews")
VOCAB = [f"word{i}" for i in range(3000)]


def sentence(rng: random.Random, n: int = 30) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def split(texts: list[str], labels: list[str] | None = None, name: str = "train.csv") -> datasets.Dataset:
    labels = labels or ["pos"] * len(texts)
    return datasets.Dataset.from_dict({"text": texts, "label": labels,
                                       "location": [f"{name}:{i + 2}" for i in range(len(texts))]})


def run(check: str, **splits: datasets.Dataset) -> Finding | None:
    result = CHECKS[check][1](DoctorContext(splits=splits, labels=["pos", "neg"]))
    assert result is None or isinstance(result, Finding)
    return result


def test_registered_with_severities() -> None:
    expected = {"exact-duplicate": "warning", "near-duplicate": "info", "leakage": "error",
                "conflicting-labels": "warning"}
    assert {name: CHECKS[name][0] for name in expected} == expected


@pytest.mark.parametrize("text", ["  Hello,   WORLD!! ", "a \t\tb\x0bc  d", "x\x1cy", "Straße ＡＢＣ", "“Quoted”",
                                  "a\u00a0b\u2003c\u2028d", "", "!!!", "Ünïcödé  Tèxt.", "ﬁne", " (a)  b "])
def test_vectorised_normalisation_matches_reference(text: str) -> None:
    assert dedup.normalize_texts([text, "plain ascii"]).to_pylist() == [dedup.normalize_text(text), "plain ascii"]


def test_normalisation() -> None:
    assert dedup.normalize_text("  “Great   PRODUCT!”  ") == "great product"
    assert dedup.normalize_text("ＳＴＲＡßＥ") == "strasse"
    assert [g.tolist() for g in dedup.exact_duplicate_groups(["a b", "A  B!", "c", "a b", "", " "])] == [[0, 1, 3]]


def test_exact_duplicates_within_split() -> None:
    f = run("exact-duplicate", train=split(["Great product!", "bad", "great   PRODUCT", "fine", "Great product"]))
    assert f is not None and f.severity == "warning" and f.count == 2
    assert f.details["groups"] == 1 and f.details["extra_copies"] == 2
    assert f.examples[0].startswith("train.csv:2 and train.csv:4 (+1 more)")
    assert run("exact-duplicate", train=split(["one", "two"]), test=split(["one"], name="test.csv")) is None


def test_near_duplicates_found_and_unrelated_not_flagged() -> None:
    rng = random.Random(0)
    base = sentence(rng)
    words = base.split()
    words[12] = "changed"
    others = [sentence(rng) for _ in range(200)]
    f = run("near-duplicate", train=split([base] + others + [" ".join(words)]))
    assert f is not None and f.count == 1 and f.details["groups"] == 1
    assert f.examples[0].startswith("train.csv:2 ~ train.csv:203 (similarity 0.87")
    assert run("near-duplicate", train=split(others)) is None
    groups = dedup.near_duplicate_groups([base] + others + [" ".join(words)])
    assert [g.tolist() for g in groups] == [[0, 201]]


def test_leakage_across_train_and_test_names_both_rows() -> None:
    rng = random.Random(1)
    train = [sentence(rng) for _ in range(50)]
    near = train[7].split()
    near[3] = "different"
    test = [sentence(rng), "  " + train[20].upper() + "!", " ".join(near)]
    f = run("leakage", train=split(train), test=split(test, name="test.csv"))
    assert f is not None and f.severity == "error" and f.count == 2
    assert f.details == {"rows": 2, "exact": 1, "near": 1, "by_split": {"test": 2}, "threshold": 0.8}
    assert f.locations == ["test.csv:3", "test.csv:4"]
    assert f.examples[0] == "test test.csv:3 repeats train train.csv:22 (same text)"
    assert f.examples[1].startswith("test test.csv:4 repeats train train.csv:9 (similarity 0.8")
    assert run("leakage", train=split(train), test=split([sentence(rng)], name="test.csv")) is None
    assert run("leakage", train=split(train + train[:1])) is None  # one split: duplicates, not leakage


def test_leakage_between_validation_and_test() -> None:
    f = run("leakage", train=split(["a b c"]), validation=split(["x y z"], name="val.csv"),
            test=split(["X y z."], name="test.csv"))
    assert f is not None and f.examples == ["test test.csv:2 repeats validation val.csv:2 (same text)"]


def test_conflicting_labels_name_the_labels() -> None:
    f = run("conflicting-labels", train=split(["Good", "bad", "good!", "ok"], ["pos", "neg", "neg", "pos"]),
            test=split(["OK"], ["neg"], name="test.csv"))
    assert f is not None and f.severity == "warning" and f.count == 2 and f.details == {"groups": 2, "rows": 4}
    assert f.examples[0].startswith("train.csv:2 ('pos') vs train.csv:4 ('neg')")
    assert f.examples[1].startswith("train.csv:5 ('pos') vs test.csv:2 ('neg')")
    assert run("conflicting-labels", train=split(["a", "a", "b"], ["pos", "pos", None])) is None


def test_multi_label_and_missing_labels() -> None:
    ds = datasets.Dataset.from_dict({"text": ["t", "t", "t", "u"], "label": [["a", "b"], ["a", "b"], [], ["c"]],
                                     "location": ["m:1", "m:2", "m:3", "m:4"]})
    assert run("conflicting-labels", train=ds) is None
    ds2 = ds.map(lambda r, i: {"label": ["a"] if i == 1 else r["label"]}, with_indices=True)
    f = run("conflicting-labels", train=ds2)
    assert f is not None and "m:1 ('a|b') vs m:2 ('a')" in f.examples[0]


def test_empty_texts_are_left_to_the_empty_text_check() -> None:
    assert run("exact-duplicate", train=split(["", "  ", "!!", "real"])) is None
    assert run("near-duplicate", train=split(["", "  ", "🙂🙂", "🙂 🙂🙂", "real"])) is None  # no words


def test_selected_rows_are_respected() -> None:
    ds = split(["same", "other", "same"]).select([1, 2])
    assert run("exact-duplicate", train=ds) is None


def test_scaling_sanity_20k() -> None:
    """20k texts with injected copies and near-copies finish (no timing asserts) and are all found."""
    rng = random.Random(2)
    texts = [sentence(rng, rng.randint(15, 30)) for _ in range(20_000)]
    for i in range(0, 400):  # 400 exact copies, 400 one-word edits of 30-word texts
        texts[10_000 + i] = texts[i].upper()
        words = sentence(rng, 30).split()
        texts[i + 1_000] = " ".join(words)
        words[rng.randrange(30)] = "edited"
        texts[i + 15_000] = " ".join(words)
    f = run("exact-duplicate", train=split(texts))
    assert f is not None and f.count == 400
    near = run("near-duplicate", train=split(texts))
    assert near is not None and near.count >= 398  # LSH misses a 0.87 pair with probability ~1e-5
    groups = dedup.near_duplicate_groups(texts)
    assert sum(len(g) - 1 for g in groups) >= 798


@pytest.mark.skipif(not AMAZON.is_dir(), reason="shared Amazon reviews data set absent")
def test_amazon_reviews_duplicates_and_leakage() -> None:
    from tunelab.data import read_source

    train, dev = read_source(str(AMAZON / "amazon_train.jsonl")), read_source(str(AMAZON / "amazon_dev.jsonl"))
    f = run("exact-duplicate", train=train, validation=dev)
    assert f is not None and f.details["by_split"]["train"] >= 101  # 6,800 rows, 6,699 distinct (SOURCE.md)
    leak = run("leakage", train=train, validation=dev)
    assert leak is not None and leak.count >= 44 and leak.details["exact"] >= 44
    assert all("amazon_dev.jsonl" in e and "amazon_train.jsonl" in e for e in leak.examples)


def test_analysis_is_shared_and_released() -> None:
    import gc

    from tunelab.data.checks import dedup as checks_dedup

    ctx = DoctorContext(splits={"train": split(["a b", "a b"])}, labels=["pos"])
    first = checks_dedup.analyse(ctx)
    assert checks_dedup.analyse(ctx) is first
    del ctx, first
    gc.collect()
    assert not checks_dedup._CACHE


@pytest.mark.parametrize("splits", [
    {"train": split(["a", "a"], ["pos", "neg"]), "test": split([], [], name="test.csv")},
    {"train": split(["", " ", "!!"])},
    {"train": split(["hello"])},
    {"train": split([], [])},
])
def test_degenerate_inputs_do_not_crash(splits: dict[str, datasets.Dataset]) -> None:
    for name in ("exact-duplicate", "near-duplicate", "leakage", "conflicting-labels"):
        run(name, **splits)


def test_minhash_engine_pieces() -> None:
    from tunelab.data import minhash

    _, offsets = minhash.word_hashes(["Hello, world hello", "", "  x_y ", "naïve café—bar"])
    assert np.diff(offsets).tolist() == [3, 0, 2, 3]  # '_' and '—' separate words
    long = "supercalifragilisticexpialidocious"  # words over 8 bytes are hashed 8 bytes per round
    hashes, _ = minhash.word_hashes(["hello world", "world hello", f"{long} {long[:-1]}S {long}"])
    assert hashes[0] == hashes[3] and hashes[1] == hashes[2] and hashes[0] != hashes[1]
    assert hashes[4] == hashes[6] != hashes[5]
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    assert minhash.union_find(6, pairs[:2]).tolist() == [0, 0, 2, 2, 4, 5]
    assert minhash.union_find(4, np.array([[2, 3], [1, 2], [0, 3]])).tolist() == [0, 0, 0, 0]
    sh, off = minhash.shingle_hashes(["a b c d", "a b c e", "x"], 2)
    assert np.diff(off).tolist() == [3, 3, 1]
    assert minhash.exact_jaccard(sh, off, np.array([[0, 1], [0, 2]])).tolist() == [0.5, 0.0]
