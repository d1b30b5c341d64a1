"""Label-quality checks: rows whose label a simple model, trained without them, confidently disputes.

A fine-tuned model fits wrong labels too, and a few percent of them cap its test score and blur its
evaluation. A cheap way to find candidates is cross-validated disagreement (the idea behind confident
learning): train TF-IDF + logistic regression on four fifths of the data, predict the held-out fifth,
and flag rows where the given label gets almost no probability while another label gets most of it.
The model never saw the row it judges, so memorising a wrong label cannot hide it.

These are suspects for a human to look at, never dropped automatically: a baseline that only sees
words disputes sarcasm, rare phrasing and genuinely ambiguous rows as well.

Also here: labels written two ways in one data set, as integer ids in some rows and as names in others
(`0` and `sports`). Each spelling becomes a class of its own, so the classifier learns 0 and sports as
different classes and nothing else would say so.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from tunelab.data.findings import MAX_EXAMPLES, DoctorContext, Finding, column, register_check

MIN_EXAMPLES = 50  # below this, five folds leave too little to learn from
MIN_PER_CLASS = 5  # one example per fold at least
MAX_TRAIN = 50_000  # rows sampled for cross-validation; five fits on more take minutes on a laptop
GIVEN_BELOW = 0.1  # out-of-fold probability of the given label under this ...
OTHER_ABOVE = 0.7  # ... while another label gets more than this: a suspect
WARN_SHARE = 0.02  # more suspects than this share of the training data: a warning, not info
MAX_LISTED = 1000
SEED = 0


def label_noise_suspects(texts: list[str], labels: list[str], given_below: float = GIVEN_BELOW,
                         other_above: float = OTHER_ABOVE, seed: int = SEED) -> list[dict[str, Any]]:
    """Rows whose label looks wrong: [{index, given, suggested, confidence, given_prob}], most confident first.

    The vocabulary and IDF are fitted once on all texts (unsupervised, so no label leaks across folds) to
    avoid five refits; the classifier is refitted per stratified fold.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    try:
        features = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=200_000, sublinear_tf=True,
                                   dtype=np.float32).fit_transform(texts)
    except ValueError:  # no word occurs twice (ids, numbers, one-character texts): nothing to judge by
        return []
    classes = sorted(set(labels))
    y = np.searchsorted(classes, labels)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    # C=4: weakly regularised enough to be confident where the words are clear (the default C=1 found a
    # third of the flipped labels in the tests), strongly enough not to dispute every odd row. saga with a
    # loose tolerance: 10x faster than lbfgs on 40k tweets, with the same suspects.
    model = LogisticRegression(C=4.0, solver="saga", tol=1e-3, max_iter=1000, random_state=seed)
    proba = cross_val_predict(model, features, y, cv=folds, method="predict_proba", n_jobs=1)
    given_prob = proba[np.arange(len(y)), y]
    others = proba.copy()
    others[np.arange(len(y)), y] = -1.0
    best = others.argmax(axis=1)
    best_prob = others[np.arange(len(y)), best]
    flagged = np.flatnonzero((given_prob < given_below) & (best_prob > other_above))
    flagged = flagged[np.argsort(-best_prob[flagged], kind="stable")]
    return [{"index": int(i), "given": labels[i], "suggested": classes[best[i]],
             "confidence": round(float(best_prob[i]), 3), "given_prob": round(float(given_prob[i]), 3)}
            for i in flagged]


def _is_id(label: str) -> bool:
    return label.lstrip("-").isdigit()


@register_check("label-ids-mixed-with-names", "error")
def ids_mixed_with_names(ctx: DoctorContext) -> Finding | None:
    """Some labels are integer ids and others names: an error when every id could number the names
    (0 <= id < the number of names: the same classes written two ways), a warning otherwise (star ratings
    1-5 beside 'n/a' may be meant). The rows listed are those written the less common way."""
    by_kind: dict[bool, list[tuple[str, str]]] = {True: [], False: []}
    for ds in ctx.splits.values():
        for value, location in zip(column(ds, "label"), column(ds, "location")):
            for lab in value if isinstance(value, list) else [value]:
                if lab:
                    by_kind[_is_id(lab)].append((location, lab))
    ids, names = by_kind[True], by_kind[False]
    if not ids or not names:
        return None
    id_set, name_set = sorted({lab for _, lab in ids}, key=int), sorted({lab for _, lab in names})
    could_be_ids = all(0 <= int(i) < len(name_set) for i in id_set)
    fewer, word = (ids, "an id") if len(ids) <= len(names) else (names, "a name")
    return Finding(
        "label-ids-mixed-with-names", "error" if could_be_ids else "warning",
        f"labels are written two ways: {len(ids)} row(s) use integer ids {_listed(id_set)} and {len(names)} use "
        f"names {_listed(name_set)}; each spelling is a class of its own ({len(id_set) + len(name_set)} classes)",
        len(fewer),
        "write every label the same way: names throughout, or ids throughout with data.labels listing the names "
        "in id order (id 0 is the first); if the numbers are class names in their own right, train with --force "
        "(the finding stays in the report)",
        [f"{location} (label '{lab}', {word})" for location, lab in fewer[:MAX_EXAMPLES]],
        {"ids": id_set, "names": name_set, "id_rows": len(ids), "name_rows": len(names),
         "rows": [location for location, _ in fewer[:MAX_LISTED]]},
        locations=[location for location, _ in fewer])


def _listed(labels: list[str], most: int = 8) -> str:
    shown = ", ".join(f"'{lab}'" for lab in labels[:most])
    return f"[{shown}{', ...' if len(labels) > most else ''}]"


def _clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[:width] + "…"


@register_check("label-noise-suspects", "info")
def label_noise(ctx: DoctorContext) -> Finding | None:
    """Training rows whose label a cross-validated TF-IDF baseline confidently disputes."""
    train = ctx.splits.get("train")
    if train is None or ctx.multi_label:
        return None
    texts_all, labels_all = column(train, "text"), column(train, "label")
    usable = [i for i, (t, lab) in enumerate(zip(texts_all, labels_all))
              if isinstance(lab, str) and lab and t.strip()]
    counts = Counter(labels_all[i] for i in usable)
    if len(usable) < MIN_EXAMPLES or len(counts) < 2 or min(counts.values()) < MIN_PER_CLASS:
        return None
    sampled = len(usable) > MAX_TRAIN
    if sampled:
        usable = sorted(np.random.default_rng(SEED).choice(usable, MAX_TRAIN, replace=False).tolist())
        kept = Counter(labels_all[i] for i in usable)  # a class too rare in the sample cannot be judged
        usable = [i for i in usable if kept[labels_all[i]] >= MIN_PER_CLASS]
    suspects = label_noise_suspects([texts_all[i] for i in usable], [labels_all[i] for i in usable])
    if not suspects:
        return None
    rows = [usable[s["index"]] for s in suspects]
    locations = column(train.select(rows), "location")  # every suspect, for scripts (Finding.locations)
    listed = [{"location": loc, **{k: v for k, v in s.items() if k != "index"}, "text": _clip(texts_all[row])}
              for loc, s, row in zip(locations[:MAX_LISTED], suspects, rows)]
    share = len(suspects) / len(usable)
    note = f" (checked a random sample of {len(usable):,} of {len(texts_all):,} rows)" if sampled else ""
    return Finding(
        "label-noise-suspects", "warning" if share > WARN_SHARE else "info",
        f"{len(suspects)} training label(s) ({share:.1%}) look wrong: a cross-validated TF-IDF baseline gives "
        f"the given label under {GIVEN_BELOW:.0%} and another label over {OTHER_ABOVE:.0%}{note}",
        len(suspects), "review these rows and correct the labels that are wrong; they are kept as they are",
        [f"{d['location']}: label '{d['given']}', suggested '{d['suggested']}' ({d['confidence']:.2f}): {d['text']!r}"
         for d in listed[:MAX_EXAMPLES]],
        {"share": round(share, 6), "checked": len(usable), "total": len(texts_all), "sampled": sampled,
         "thresholds": {"given_below": GIVEN_BELOW, "other_above": OTHER_ABOVE},
         "model": "tfidf word 1-2 grams + logistic regression, 5-fold stratified out-of-fold probabilities",
         "suspects": listed}, locations=locations)
