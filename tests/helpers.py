"""Tiny, offline test fixtures: a random-init BERT and a separable 3-class text CSV."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CLASS_WORDS = {
    "sports": ["goal", "match", "team", "score", "coach", "league", "player", "stadium"],
    "weather": ["rain", "storm", "sunny", "cloud", "wind", "snow", "forecast", "thunder"],
    "tech": ["laptop", "software", "chip", "code", "server", "robot", "network", "app"],
}
FILLER = ["the", "a", "today", "was", "very", "and", "in", "of", "new", "big"]


def make_text_csv(path: str | Path, n_per_class: int = 60, seed: int = 0) -> list[str]:
    """Write a separable 3-class CSV (text,label) to PATH; return every word used (for the vocab)."""
    rng = random.Random(seed)
    rows = []
    for label, words in CLASS_WORDS.items():
        for _ in range(n_per_class):
            tokens = rng.choices(words, k=rng.randint(3, 6)) + rng.choices(FILLER, k=rng.randint(1, 4))
            rng.shuffle(tokens)
            rows.append((" ".join(tokens), label))
    rng.shuffle(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return sorted({w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER))


def make_tiny_bert(folder: str | Path, words: list[str]) -> Path:
    """Save a random-init 2-layer BERT (hidden 32) and a WordPiece tokenizer over WORDS into FOLDER."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + [w for w in dict.fromkeys(words) if w not in SPECIAL]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 takes the vocabulary as `vocab` (a `vocab_file=` keyword is silently ignored)
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert tokenizer.convert_tokens_to_ids(vocab[-1]) == len(vocab) - 1, "tokenizer did not take the vocabulary"
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)  # the same tiny model in every session, so test outcomes do not vary
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_sentence_encoder(folder: str | Path, words: list[str]) -> Path:
    """A sentence-transformers folder over the tiny BERT of make_tiny_bert: Transformer -> mean Pooling ->
    Normalize, the layout of all-MiniLM-L6-v2 (what SetFit and the zero-shot baseline need)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    folder = Path(folder)
    bert = make_tiny_bert(folder.with_name(folder.name + "-bert"), words)
    transformer = Transformer(str(bert), max_seq_length=64)
    encoder = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"),
                                           Normalize()], device="cpu")
    encoder.save(str(folder))
    return folder


def leaky_set(root: Path) -> dict[str, Path]:
    """Train / validation / test CSVs (text,label) where validation leaks: 100 training texts of 30 random words;
    a validation file whose first 79 rows each change one word of a training text (word-bigram Jaccard 0.87,
    over the doctor's 0.8 threshold) and 21 new texts; a test file of 20 new texts. Words are w0..w399."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(400)]
    sentence = lambda: " ".join(rng.choice(vocab) for _ in range(30))
    train = [(sentence(), "pos" if i % 2 else "neg") for i in range(100)]
    val = []
    for text, label in train[:79]:
        words = text.split()
        words[15] = "changed"
        val.append((" ".join(words), label))
    val += [(sentence(), "pos" if i % 2 else "neg") for i in range(21)]
    test = [(sentence(), "pos" if i % 2 else "neg") for i in range(20)]
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, rows in (("train", train), ("validation", val), ("test", test)):
        with open(root / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        out[name] = root / f"{name}.csv"
    return out


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at PATH with OPTIONS ("size=1m", "ro,size=1m"), unmounted after. Skips the test where
    mounting is not possible (not root, no mount permission), saying why."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the disk-full and read-only cases run as root, as in CI)")
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(disk: Path, leave: int) -> None:
    """Fill DISK with one file until about LEAVE bytes are free."""
    stats = os.statvfs(disk)
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\0" * max(stats.f_bavail * stats.f_frsize - leave, 0))
