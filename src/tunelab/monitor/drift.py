"""Drift checks: pure functions from numbers and texts to one check result each.

Every check returns the same shape, {name, value, threshold, alert, details}, so the report, the CLI table
and cron all read them alike. `details["summary"]` is one human sentence; `details["skipped"]` says why a
check could not run (too few requests, inputs not logged, not a classifier).

Effect size and chance are both required before a distribution check alerts: the effect must pass the
spec's threshold (so a trivially significant difference on a busy server stays quiet) and the test must say
it is unlikely to be noise (p < SIGNIFICANCE, so a handful of requests cannot raise an alarm on their own).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

SIGNIFICANCE = 0.05  # the chance level that effect-size checks also require (length, labels, confidence)
MAX_SAMPLE = 500  # per side, for the embedding test
_WORD = re.compile(r"\w+", re.UNICODE)


def result(name: str, value: float | None, threshold: float, alert: bool, summary: str, **details: Any) -> dict[str, Any]:
    """One check's result in the common shape."""
    clean = None if value is None else float(value)
    return {"name": name, "value": clean, "threshold": float(threshold), "alert": bool(alert),
            "details": {"summary": summary, **details}}


def skipped(name: str, threshold: float, reason: str) -> dict[str, Any]:
    """A check that could not run; never an alert, and says why."""
    return result(name, None, threshold, False, f"skipped: {reason}", skipped=reason)


# -- input drift --------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """Lower-cased word tokens (unicode letters, digits, underscore); punctuation is not a word."""
    return _WORD.findall(text.lower())


def text_lengths(texts: Iterable[str]) -> np.ndarray:
    """Length of each text in words (model-independent, so it means the same for every base model)."""
    return np.array([len(words(t)) for t in texts], dtype=float)


def length_check(train_lengths: Sequence[float], logged_lengths: Sequence[float], threshold: float) -> dict[str, Any]:
    """Mean length shift as a share of the training mean, plus a two-sample Kolmogorov-Smirnov test."""
    from scipy.stats import ks_2samp

    train, logged = np.asarray(train_lengths, float), np.asarray(logged_lengths, float)
    if not len(train) or not len(logged):
        return skipped("input_length", threshold, "no texts to compare")
    base, now = float(train.mean()), float(logged.mean())
    shift = (now - base) / base if base else (0.0 if now == 0 else float("inf"))
    ks = ks_2samp(train, logged)
    alert = abs(shift) > threshold and ks.pvalue < SIGNIFICANCE
    direction = "longer" if shift > 0 else "shorter"
    summary = (f"mean length {now:.1f} words vs {base:.1f} in training ({abs(shift):.0%} {direction}; "
               f"KS p={ks.pvalue:.2g})")
    return result("input_length", abs(shift), threshold, alert, summary, train_mean=base, logged_mean=now,
                  signed_shift=shift, train_median=float(np.median(train)), logged_median=float(np.median(logged)),
                  ks_statistic=float(ks.statistic), ks_p_value=float(ks.pvalue), significance=SIGNIFICANCE,
                  n_train=len(train), n_logged=len(logged))


def vocabulary(texts: Iterable[str]) -> set[str]:
    """Every word of the training texts."""
    return {w for t in texts for w in words(t)}


def oov_rate(texts: Iterable[str], vocab: set[str]) -> tuple[float, int]:
    """Share of words never seen in the training texts, and the number of words counted."""
    total = unseen = 0
    for t in texts:
        for w in words(t):
            total += 1
            unseen += w not in vocab
    return (unseen / total if total else 0.0), total


def unk_rate(texts: Sequence[str], tokenizer: Any) -> float | None:
    """Share of the tokenizer's pieces that are its unknown token (WordPiece); None when it has none (BPE)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return None
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    total = sum(len(row) for row in ids)
    return sum(row.count(unk) for row in ids) / total if total else 0.0


def oov_check(reference_rate: float, logged_texts: Sequence[str], vocab: set[str], threshold: float,
              reference_unk: float | None = None, logged_unk: float | None = None) -> dict[str, Any]:
    """Rise of the out-of-vocabulary rate (words never seen in training) over held-out data's own rate.

    The reference is the held-out split's rate against the training vocabulary, not zero: even in-distribution
    text has words training never saw, and only the increase over that says the traffic moved.
    """
    rate, n_words = oov_rate(logged_texts, vocab)
    if not n_words:
        return skipped("oov_rate", threshold, "the logged texts contain no words")
    increase = rate - reference_rate
    unseen = Counter(w for t in logged_texts for w in words(t) if w not in vocab)
    summary = f"{rate:.1%} of logged words never occur in training vs {reference_rate:.1%} in held-out data"
    return result("oov_rate", increase, threshold, increase > threshold, summary, logged_rate=rate,
                  reference_rate=reference_rate, logged_words=n_words, vocabulary_size=len(vocab),
                  top_unseen=[w for w, _ in unseen.most_common(10)], logged_unk_token_rate=logged_unk,
                  reference_unk_token_rate=reference_unk)


def sample_rows(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most CAP of N rows, drawn without replacement, in their original order."""
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, size=cap, replace=False))


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 500, seed: int = 0) -> dict[str, float]:
    """Two-sample test on embeddings: unbiased MMD^2 with an RBF kernel, p-value by permutation.

    The kernel's bandwidth is the median pairwise squared distance of the pooled sample (median heuristic).
    The kernel matrix is computed once; every permutation is a re-labelling of its rows, evaluated for a batch
    of permutations at once as matrix products, so 500 permutations of 500+500 points take well under a second.
    p = (1 + #{permuted >= observed}) / (1 + permutations), never 0.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("mmd_test needs at least two points on each side")
    z = np.vstack([x, y])
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    off_diag = d2[np.triu_indices(len(z), k=1)]
    positive = off_diag[off_diag > 0]
    bandwidth = float(np.median(positive)) if len(positive) else 1.0
    k = np.exp(-d2 / bandwidth)
    np.fill_diagonal(k, 0.0)  # the unbiased estimate leaves out each point's kernel with itself
    total = k.sum()

    def stats(assign: np.ndarray) -> np.ndarray:  # assign: (m+n, P) 0/1, 1 = first sample
        ka = k @ assign
        s_xx = (assign * ka).sum(0)
        s_xy = ka.sum(0) - s_xx  # row sums of K over the first sample, restricted to the second
        s_yy = total - 2 * s_xy - s_xx
        return s_xx / (m * (m - 1)) + s_yy / (n * (n - 1)) - 2 * s_xy / (m * n)

    first = np.zeros((m + n, 1))
    first[:m] = 1.0
    observed = float(stats(first)[0])
    rng = np.random.default_rng(seed)
    exceed, done = 0, 0
    while done < permutations:
        batch = min(100, permutations - done)
        assign = np.zeros((m + n, batch))
        for j in range(batch):
            assign[rng.permutation(m + n)[:m], j] = 1.0
        exceed += int((stats(assign) >= observed - 1e-12).sum())
        done += batch
    return {"mmd2": observed, "p_value": (1 + exceed) / (1 + permutations), "bandwidth": bandwidth,
            "n_reference": m, "n_logged": n, "permutations": permutations}


def embedding_check(reference: np.ndarray, logged: np.ndarray, threshold: float, permutations: int = 500,
                    seed: int = 0, reference_name: str = "held-out") -> dict[str, Any]:
    """Embedding drift: MMD permutation test of the fine-tuned encoder's mean-pooled embeddings."""
    if len(reference) < 2 or len(logged) < 2:
        return skipped("embedding_drift", threshold, "fewer than two embeddings on one side")
    # enough permutations that the smallest attainable p-value, 1/(1+permutations), is well below the threshold
    permutations = max(permutations, int(np.ceil(5 / threshold)))
    rng = np.random.default_rng(seed)
    reference = np.asarray(reference)[sample_rows(len(reference), MAX_SAMPLE, rng)]
    logged = np.asarray(logged)[sample_rows(len(logged), MAX_SAMPLE, rng)]
    test = mmd_test(reference, logged, permutations, seed)
    p = test["p_value"]
    summary = (f"MMD permutation test of {len(logged)} logged vs {len(reference)} {reference_name} embeddings: "
               f"p={p:.3g} ({'different distributions' if p < threshold else 'no evidence of a shift'})")
    return result("embedding_drift", p, threshold, p < threshold, summary, method="MMD^2 (RBF kernel, median "
                  "heuristic) permutation test on mean-pooled last hidden states", reference=reference_name,
                  seed=seed, **test)


# -- prediction drift -----------------------------------------------------------------------------------
def distribution(labels: Iterable[str], names: Sequence[str] = ()) -> dict[str, float]:
    """Share of each label; every name in NAMES appears (0.0 when absent)."""
    counts = Counter(labels)
    total = sum(counts.values())
    keys = list(dict.fromkeys([*names, *sorted(counts)]))
    return {k: (counts[k] / total if total else 0.0) for k in keys}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def label_check(reference_labels: Sequence[str], logged_labels: Sequence[str], threshold: float,
                names: Sequence[str] = (), reference_name: str = "validation predictions",
                true_distribution: dict[str, float] | None = None) -> dict[str, Any]:
    """Predicted-label shift: total variation distance, and a chi-square test of homogeneity (reference
    counts vs logged counts, a 2 x K table, so the reference's own sampling noise is accounted for)."""
    from scipy.stats import chi2_contingency

    if not len(reference_labels) or not len(logged_labels):
        return skipped("label_shift", threshold, "no predictions to compare")
    ref, now = distribution(reference_labels, names), distribution(logged_labels, names)
    keys = list(dict.fromkeys([*ref, *now]))
    ref_counts, now_counts = Counter(reference_labels), Counter(logged_labels)
    table = np.array([[ref_counts[k] for k in keys], [now_counts[k] for k in keys]], dtype=float)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        p_value, chi2 = 1.0, 0.0  # one label on both sides: identical distributions
    else:
        chi2, p_value, _, _ = chi2_contingency(table)
    tvd = total_variation(ref, now)
    top = max(now, key=now.get)
    summary = (f"predicted labels differ from {reference_name} by TVD {tvd:.2f} (chi-square p={p_value:.2g}); "
               f"most frequent now: {top} ({now[top]:.0%} vs {ref.get(top, 0.0):.0%})")
    return result("label_shift", tvd, threshold, tvd > threshold and p_value < SIGNIFICANCE, summary,
                  reference=ref, logged=now, reference_name=reference_name, chi2=float(chi2),
                  p_value=float(p_value), significance=SIGNIFICANCE, n_reference=len(reference_labels),
                  n_logged=len(logged_labels), validation_true_labels=true_distribution)


def confidence_check(reference_scores: Sequence[float], logged_scores: Sequence[float], threshold: float,
                     reference_name: str = "validation") -> dict[str, Any]:
    """Fall of the mean top score, with a one-sided Mann-Whitney test (logged scores lower)."""
    from scipy.stats import mannwhitneyu

    ref, now = np.asarray(reference_scores, float), np.asarray(logged_scores, float)
    if not len(ref) or not len(now):
        return skipped("confidence_drop", threshold, "no scores to compare")
    drop = float(ref.mean() - now.mean())
    p_value = float(mannwhitneyu(now, ref, alternative="less").pvalue) if len(set(np.r_[ref, now])) > 1 else 1.0
    summary = (f"mean top score {now.mean():.3f} vs {ref.mean():.3f} on {reference_name} "
               f"({'down' if drop > 0 else 'up'} {abs(drop):.3f}; Mann-Whitney p={p_value:.2g})")
    return result("confidence_drop", drop, threshold, drop > threshold and p_value < SIGNIFICANCE, summary,
                  reference_mean=float(ref.mean()), logged_mean=float(now.mean()),
                  logged_low_share=float((now < 0.5).mean()), p_value=p_value, significance=SIGNIFICANCE,
                  n_reference=len(ref), n_logged=len(now))


# -- serving health -------------------------------------------------------------------------------------
def is_failure(status: int | None, error: str | None) -> bool:
    return (status is not None and int(status) >= 400) or bool(error)


def error_rate_check(statuses: Sequence[int | None], errors: Sequence[str | None], threshold: float) -> dict[str, Any]:
    """Share of failed requests: HTTP status >= 400, or an error recorded."""
    if not len(statuses):
        return skipped("error_rate", threshold, "no requests")
    failed = [is_failure(s, e) for s, e in zip(statuses, errors)]
    rate = sum(failed) / len(failed)
    by_status = Counter(str(s) for s, f in zip(statuses, failed) if f)
    messages = Counter((e or "")[:120] for e, f in zip(errors, failed) if f and e)
    summary = f"{sum(failed)} of {len(failed)} requests failed ({rate:.1%})"
    return result("error_rate", rate, threshold, rate > threshold, summary, failed=sum(failed), total=len(failed),
                  by_status=dict(by_status), top_errors=[m for m, _ in messages.most_common(5)])


def latency_check(latencies_ms: Sequence[float | None], threshold: float) -> dict[str, Any]:
    """p50 / p95 / p99 latency; alerts on p99."""
    values = np.array([v for v in latencies_ms if v is not None], dtype=float)
    if not len(values):
        return skipped("latency_p99_ms", threshold, "no latencies logged")
    p50, p95, p99 = (float(np.percentile(values, q)) for q in (50, 95, 99))
    summary = f"p50 {p50:.0f} ms, p99 {p99:.0f} ms over {len(values)} requests"
    return result("latency_p99_ms", p99, threshold, p99 > threshold, summary, p50=p50, p95=p95, p99=p99,
                  max=float(values.max()), n=len(values))
