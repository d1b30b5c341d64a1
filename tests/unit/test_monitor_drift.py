"""Drift checks: flagged on shifted numbers, quiet on samples of one distribution."""

from __future__ import annotations

import numpy as np
import pytest

from tunelab.monitor import drift


def test_result_shape_and_skipped():
    r = drift.skipped("oov_rate", 0.05, "inputs were not logged")
    assert set(r) == {"name", "value", "threshold", "alert", "details"}
    assert r["alert"] is False and r["value"] is None and "not logged" in r["details"]["summary"]


def test_length_shift_flagged_and_not():
    rng = np.random.default_rng(0)
    train = rng.integers(5, 15, 400)
    same = drift.length_check(train, rng.integers(5, 15, 80), 0.3)
    assert not same["alert"] and same["value"] < 0.3
    longer = drift.length_check(train, rng.integers(30, 60, 80), 0.3)
    assert longer["alert"] and longer["details"]["signed_shift"] > 1 and longer["details"]["ks_p_value"] < 1e-6
    # a big mean shift on two requests is not significant: no alert
    assert not drift.length_check(train, [40, 2], 0.3)["alert"]


def test_oov_rise_over_reference():
    vocab = drift.vocabulary(["the goal of the match", "rain and wind today"])
    assert drift.oov_rate(["the goal", "Rain!"], vocab) == (0.0, 3)
    quiet = drift.oov_check(0.02, ["the match today"] * 40, vocab, 0.05)
    assert not quiet["alert"] and quiet["value"] == pytest.approx(-0.02)
    loud = drift.oov_check(0.02, ["quantum photon lattice the"] * 40, vocab, 0.05)
    assert loud["alert"] and loud["details"]["logged_rate"] == 0.75 and "quantum" in loud["details"]["top_unseen"]


def test_mmd_test_separates_shifted_embeddings_only():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(120, 8))
    same = drift.embedding_check(ref, rng.normal(size=(60, 8)), 0.01, permutations=200, seed=0)
    shifted = drift.embedding_check(ref, rng.normal(0.8, 1.0, size=(60, 8)), 0.01, permutations=200, seed=0)
    assert not same["alert"] and same["value"] > 0.01
    # at least 5 / threshold permutations, so the smallest possible p-value is below the threshold
    assert shifted["alert"] and shifted["value"] == pytest.approx(1 / 501)
    strict = drift.embedding_check(ref, rng.normal(0.8, 1.0, size=(60, 8)), 0.001, permutations=200, seed=0)
    assert strict["details"]["permutations"] == 5000 and strict["alert"]
    # seeded: the same inputs give the same p-value
    x = rng.normal(0.2, 1.0, size=(40, 8))
    assert drift.embedding_check(ref, x, 0.01, seed=3)["value"] == drift.embedding_check(ref, x, 0.01, seed=3)["value"]


def test_mmd_null_p_values_are_roughly_uniform():
    rng = np.random.default_rng(2)
    ps = [drift.mmd_test(rng.normal(size=(30, 4)), rng.normal(size=(30, 4)), permutations=99, seed=s)["p_value"]
          for s in range(20)]
    assert 0.25 < float(np.mean(ps)) < 0.75 and min(ps) > 0.01


def test_mmd_matches_direct_computation():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 3)), rng.normal(1, 1, size=(5, 3))
    out = drift.mmd_test(x, y, permutations=10, seed=0)
    z = np.vstack([x, y])
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    k = np.exp(-d2 / out["bandwidth"])
    kxx, kyy, kxy = k[:7, :7], k[7:, 7:], k[:7, 7:]
    expected = ((kxx.sum() - 7) / 42 + (kyy.sum() - 5) / 20 - 2 * kxy.mean())
    assert out["mmd2"] == pytest.approx(expected)


def test_sample_rows_caps_and_is_seeded():
    a = drift.sample_rows(2000, 500, np.random.default_rng(0))
    assert len(a) == 500 and len(set(a)) == 500 and (np.diff(a) > 0).all()
    assert (a == drift.sample_rows(2000, 500, np.random.default_rng(0))).all()
    assert list(drift.sample_rows(3, 500, np.random.default_rng(0))) == [0, 1, 2]


def test_label_shift():
    ref = ["a"] * 40 + ["b"] * 40 + ["c"] * 40
    quiet = drift.label_check(ref, ["a"] * 20 + ["b"] * 22 + ["c"] * 18, 0.15, names=["a", "b", "c"])
    assert not quiet["alert"] and quiet["value"] < 0.1
    loud = drift.label_check(ref, ["a"] * 60, 0.15, names=["a", "b", "c"])
    assert loud["alert"] and loud["value"] == pytest.approx(2 / 3) and loud["details"]["p_value"] < 1e-6
    assert loud["details"]["logged"] == {"a": 1.0, "b": 0.0, "c": 0.0}
    # a TVD of 2/3 on two requests is not significant
    assert not drift.label_check(ref, ["a"] * 2, 0.15)["alert"]
    assert drift.total_variation({"a": 1.0}, {"b": 1.0}) == 1.0


def test_confidence_drop():
    rng = np.random.default_rng(4)
    ref = rng.uniform(0.8, 1.0, 100)
    assert not drift.confidence_check(ref, rng.uniform(0.8, 1.0, 50), 0.1)["alert"]
    low = drift.confidence_check(ref, rng.uniform(0.3, 0.5, 50), 0.1)
    assert low["alert"] and low["value"] > 0.3 and low["details"]["logged_low_share"] > 0.5


def test_error_rate_and_latency():
    statuses = [200] * 90 + [500] * 6 + [200] * 4
    errors = [None] * 96 + ["timeout"] * 4
    r = drift.error_rate_check(statuses, errors, 0.05)
    assert r["alert"] and r["value"] == pytest.approx(0.10) and r["details"]["by_status"] == {"500": 6, "200": 4}
    assert not drift.error_rate_check([200, 201, 404], [None] * 3, 0.5)["alert"]
    assert drift.error_rate_check([], [], 0.05)["details"]["skipped"]
    lat = drift.latency_check([20.0] * 98 + [5000.0, 6000.0], 2000)
    assert lat["alert"] and lat["details"]["p50"] == 20.0
    assert not drift.latency_check([20.0] * 100, 2000)["alert"]
