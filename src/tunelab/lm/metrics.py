"""Metrics for generated text against a reference answer: exact match, token F1 and ROUGE-L.

Exact match and token F1 follow the SQuAD evaluation script (lower-case, strip punctuation, articles
and extra whitespace), because answers that differ only in a full stop are the same answer. ROUGE-L
comes from Google's `rouge-score` package (the reference implementation of ROUGE-1.5.5), with the
Porter stemmer, so our numbers compare with published ones.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache
from typing import Any

GENERATION_METRICS = ("exact_match", "token_f1", "rouge_l")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (bag of words)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of stemmed tokens)."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Mean exact match, token F1 and ROUGE-L over paired predictions and references, with n."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    n = len(references)
    if n == 0:
        return {"exact_match": float("nan"), "token_f1": float("nan"), "rouge_l": float("nan"), "n": 0}
    pairs = list(zip(predictions, references))
    return {"exact_match": sum(exact_match(p, r) for p, r in pairs) / n,
            "token_f1": sum(token_f1(p, r) for p, r in pairs) / n,
            "rouge_l": sum(rouge_l(p, r) for p, r in pairs) / n,
            "n": n}
