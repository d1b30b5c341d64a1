import numpy as np

from tunelab.train.sampling import LengthMixedBatchSampler, RandomBatchSampler, within_class_rank


def length_follows_label(n: int = 800, seed: int = 0) -> tuple[list[int], list[str]]:
    """Like Financial PhraseBank: one class is short, the other long."""
    rng = np.random.default_rng(seed)
    labels = ["neutral" if i % 2 else "negative" for i in range(n)]
    lengths = [int(rng.integers(8, 30)) if lab == "neutral" else int(rng.integers(25, 80)) for lab in labels]
    return lengths, labels


def test_every_example_once_per_epoch_and_deterministic() -> None:
    lengths, labels = length_follows_label(203)
    sampler = LengthMixedBatchSampler(lengths, labels, batch_size=16, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 13
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert batches == list(LengthMixedBatchSampler(lengths, labels, batch_size=16, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order each epoch


def test_batches_keep_labels_mixed_where_plain_length_grouping_does_not() -> None:
    lengths, labels = length_follows_label()
    ours = list(LengthMixedBatchSampler(lengths, labels, batch_size=16, seed=0))
    mixed = [len({labels[i] for i in b}) == 2 for b in ours]
    assert np.mean(mixed) > 0.95
    # plain length grouping (what HF group_by_length does in effect) puts one class per batch
    by_length = np.argsort(lengths, kind="stable")
    plain = [by_length[i:i + 16] for i in range(0, len(by_length), 16)]
    assert np.mean([len({labels[i] for i in b}) == 2 for b in plain]) <= 0.25


def test_less_padding_than_random_order() -> None:
    lengths, labels = length_follows_label()
    padded = lambda batches: sum(max(lengths[i] for i in b) * len(b) for b in batches)
    ours = padded(list(LengthMixedBatchSampler(lengths, labels, batch_size=16, seed=0)))
    rand = padded(list(RandomBatchSampler(lengths, labels, batch_size=16, seed=0)))
    assert ours < 0.85 * rand


def test_within_class_rank() -> None:
    rank = within_class_rank([5, 1, 3, 100], ["a", "a", "a", "b"])
    assert rank.tolist() == [1.0, 0.0, 0.5, 0.0]
