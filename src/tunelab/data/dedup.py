"""Exact and near-duplicate detection, vectorised so a million short texts take seconds, not hours.

Why this shape: a per-text Python loop (datasketch's MinHash.update, difflib, set Jaccard) costs tens of
microseconds per text and is quadratic when pairs are compared, so 1M texts would take hours. Here:

* normalisation and exact grouping run in Arrow's C++ kernels (NFKC, case, whitespace, edge punctuation;
  `dictionary_encode` hashes the normalised strings to one integer code per distinct text);
* near-duplicates use MinHash over word n-gram shingles plus LSH banding, all in numpy: words are hashed
  from their bytes by array operations (stable across processes, unlike `hash()`), shingles and the
  permutations `a*x + b mod 2**32` are array operations, candidate pairs come from equal band keys
  (sorting, so sub-quadratic), and candidates are kept when their exact shingle Jaccard reaches the
  threshold (computed for all candidates at once);
* groups are the connected components of the kept pairs (a vectorised union-find).

Exact duplicates share a code, so MinHash runs once per distinct normalised text. The array machinery
(hashing, MinHash, LSH, exact Jaccard, union-find) lives in `tunelab.data.minhash`.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunelab.data.minhash import (NearDupParams, as_string_array, band_keys, candidate_pairs, exact_jaccard, minhash,
                                  mix64, shingle_hashes, union_find)

__all__ = ["NearDupParams", "NearDuplicates", "encode", "exact_duplicate_groups", "exact_jaccard", "groups_of",
           "jaccard", "near_duplicate_groups", "near_duplicates", "normalize_text", "normalize_texts",
           "shingle_hashes"]

EDGE_CHARS = string.punctuation + "“”‘’«»„‚‹›…–—―¡¿·•" + " "
# ASCII whitespace that str.split() would change: runs of 2+, or a single non-space (matching every lone
# space instead makes the kernel 10x slower). Only ASCII rows take the Arrow path.
_WHITESPACE = r"[\t-\r\x1c-\x1f ]{2,}|[\t-\r\x1c-\x1f]"
_BLOCK_TEXTS = 50_000  # texts per tokenise/MinHash block: bounds the temporary arrays


def normalize_text(text: str) -> str:
    """The reference normalisation: NFKC, casefold, collapse whitespace, strip edge punctuation."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.split()).strip(EDGE_CHARS)


def normalize_texts(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """`normalize_text` for many texts: Arrow kernels for ASCII rows, the reference for the others.

    For ASCII, lower == casefold and NFKC is the identity, so the fast path is exact; non-ASCII rows
    (accents, fullwidth forms, ß) go through Python so both paths give identical results.
    """
    arr = as_string_array(texts)
    fast = pc.utf8_trim(pc.replace_substring_regex(pc.ascii_lower(arr), _WHITESPACE, " "), EDGE_CHARS)
    other = pc.invert(pc.string_is_ascii(arr))
    if pc.any(other).as_py():
        fixed = [normalize_text(t) for t in arr.filter(other).to_pylist()]
        fast = pc.replace_with_mask(fast, other, pa.array(fixed, pa.large_string()))
    return fast


def encode(normalized: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """One int64 code per text (equal code = equal normalised text; -1 = empty) and the distinct texts."""
    enc = normalized.dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    empty = pc.equal(pc.binary_length(enc.dictionary), 0).to_numpy(zero_copy_only=False)
    if len(codes):
        codes[empty[codes]] = -1
    return codes, enc.dictionary


def groups_of(labels: np.ndarray) -> list[np.ndarray]:
    """Indices sharing a label (labels < 0 ignored), groups of two or more, ordered by first index."""
    valid = np.flatnonzero(labels >= 0)
    order = valid[np.argsort(labels[valid], kind="stable")]
    if order.size < 2:
        return []
    starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
    sizes = np.diff(np.r_[starts, order.size])
    groups = [order[s:s + n] for s, n in zip(starts[sizes > 1], sizes[sizes > 1])]
    return sorted(groups, key=lambda g: int(g[0]))


def exact_duplicate_groups(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """Groups of indices whose texts are equal after normalisation."""
    return groups_of(encode(normalize_texts(texts))[0])


@dataclass
class NearDuplicates:
    """Near-duplicate clusters over N texts: `cluster[i]` is the smallest index in i's cluster (i when
    alone); `pairs`/`similarity` are the verified pairs with their exact shingle Jaccard."""

    cluster: np.ndarray
    pairs: np.ndarray
    similarity: np.ndarray


def near_duplicates(texts: pa.Array, params: NearDupParams = NearDupParams()) -> NearDuplicates:
    """Cluster texts (normalised and distinct, for speed) whose word-shingle Jaccard reaches the
    threshold: MinHash + LSH propose candidate pairs, their exact Jaccard decides (an estimate passes
    only half of the pairs right at the threshold). Only shingles and band keys are kept per block, not
    signatures (4x smaller). Texts without words never join a cluster."""
    texts = as_string_array(texts)
    n = len(texts)
    keys = np.empty((n, params.bands), dtype=np.uint64)
    shingles, counts = [], []
    for start in range(0, n, _BLOCK_TEXTS):
        hashes, offsets = shingle_hashes(texts.slice(start, _BLOCK_TEXTS), params.ngram)
        keys[start:start + len(offsets) - 1] = band_keys(minhash(hashes, offsets, params), params.bands)
        shingles.append(hashes)
        counts.append(np.diff(offsets))
    hashes = np.concatenate(shingles) if shingles else np.zeros(0, np.uint32)
    count = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    offsets = np.r_[0, np.cumsum(count)].astype(np.int64)
    blank = np.flatnonzero(count == 0)  # no words: give every band a key of its own, so it never matches
    keys[blank] = mix64(np.arange(len(blank) * params.bands, dtype=np.uint64).reshape(-1, params.bands)
                        + np.uint64(0x5DEECE66D << 20))
    cand = candidate_pairs(keys) if n > 1 else np.zeros((0, 2), np.int64)
    del keys
    sim = exact_jaccard(hashes, offsets, cand)
    ok = sim >= params.threshold
    return NearDuplicates(union_find(n, cand[ok]), cand[ok], sim[ok])


def near_duplicate_groups(texts: Sequence[str] | pa.Array | pa.ChunkedArray,
                          params: NearDupParams = NearDupParams()) -> list[np.ndarray]:
    """Groups of indices whose texts are equal or near-equal after normalisation (exact copies included)."""
    codes, distinct = encode(normalize_texts(texts))
    cluster = near_duplicates(distinct, params).cluster
    return groups_of(np.where(codes >= 0, cluster[np.maximum(codes, 0)], -1))


def jaccard(a: str, b: str, ngram: int = 2) -> float:
    """Exact shingle Jaccard of two texts (normalised first), for reporting an example pair."""
    hashes, offsets = shingle_hashes(normalize_texts([a, b]), ngram)
    left, right = set(hashes[:offsets[1]].tolist()), set(hashes[offsets[1]:].tolist())
    return len(left & right) / len(left | right) if left | right else 1.0
