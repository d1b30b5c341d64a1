"""Padding-free and packed batches must give exactly what one-example-at-a-time gives."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunelab.lm.batching import (IGNORE, BinBatchSampler, LMCollator, flatten, lm_loss, pack, pad,
                                 register_varlen_attention, trained_positions)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).eval()
    m.set_attn_implementation(register_varlen_attention())
    return m


def _features(lengths=(5, 17, 9, 2), seed: int = 1) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    feats = []
    for n in lengths:
        ids = torch.randint(3, 300, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [IGNORE] * (n // 2) + ids[n // 2:]})
    return feats


def _reference_loss(model, feats) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for f in feats:
            logits = model(input_ids=torch.tensor([f["input_ids"]])).logits[0, :-1]
            target = torch.tensor(f["labels"][1:])
            keep = target != IGNORE
            total += float(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count, count


def test_flattened_row_gives_each_example_its_own_logits(model) -> None:
    feats = _features()
    batch = flatten(feats)
    assert batch["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in feats))
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 22, 31, 33]
    assert batch["position_ids"][0, 5].item() == 0  # restarts per example
    with torch.no_grad():
        flat = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        start = 0
        for f in feats:
            alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            n = len(f["input_ids"])
            torch.testing.assert_close(flat[start:start + n], alone, atol=1e-5, rtol=1e-5)
            start += n


def test_padded_batch_matches_too(model) -> None:
    feats = _features()
    batch = pad(feats, pad_id=0)
    assert batch["attention_mask"].sum().item() == 33
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for row, f in enumerate(feats):
            n = len(f["input_ids"])
            torch.testing.assert_close(logits[row, :n], model(input_ids=torch.tensor([f["input_ids"]])).logits[0],
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["padding-free", "padded"])
def test_loss_equals_token_mean_over_trained_tokens(model, mode) -> None:
    feats = _features()
    batch = LMCollator(mode, pad_id=0)(feats)
    with torch.no_grad():
        loss, n = lm_loss(model, batch)
    expected, count = _reference_loss(model, feats)
    assert n == count
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_no_example_learns_across_a_boundary() -> None:
    feats = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    batch = flatten(feats)
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]]
    # position 2 (last of example 1) must not predict the first token of example 2
    assert 2 not in trained_positions(batch["labels"]).tolist()


def test_batch_without_trained_tokens_gives_zero_loss(model) -> None:
    feats = [{"input_ids": [5, 6, 7], "labels": [IGNORE] * 3}]
    loss, n = lm_loss(model, flatten(feats))
    assert n == 0 and float(loss) == 0.0


def test_pack_fills_bins_within_capacity_and_keeps_every_example() -> None:
    lengths = [100, 60, 50, 40, 30, 20, 10, 128, 5]
    bins = pack(lengths, capacity=128, seed=0)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) == 4  # 443 tokens need at least 4 bins of 128
    assert pack(lengths, 128, seed=0) == bins


def test_packing_collator_flattens_bins() -> None:
    feats = _features((4, 6, 3))
    batch = LMCollator("packing", pad_id=0)([[feats[0], feats[1]], [feats[2]]])
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 10, 13]
    with pytest.raises(ValueError, match="padding-free"):
        LMCollator("length-mixed", 0)


def test_bin_sampler_is_seeded_and_reshuffles_per_epoch() -> None:
    a, b = BinBatchSampler(10, 3, seed=4), BinBatchSampler(10, 3, seed=4)
    first = list(a)
    assert first == list(b) and len(first) == len(a) == 4
    assert sorted(i for batch in first for i in batch) == list(range(10))
    a.set_epoch(1)
    assert list(a) != first
