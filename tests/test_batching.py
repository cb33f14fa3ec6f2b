import random

import pytest
import torch

from seq2seq.config import DataConfig
from seq2seq.data import BOS, EOS, PAD, BatchIterator, bucket_batches, collate, make_example


def random_lengths(n=3000, seed=0):
    """Source lengths 1..60, target lengths near them, as in a real parallel corpus."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        src = rng.randint(1, 60)
        out.append((src, max(1, src + rng.randint(-4, 4))))
    return out


@pytest.mark.parametrize("max_tokens,batch_size", [(1000, 0), (0, 32), (800, 16)])
def test_every_example_exactly_once_and_within_budget(max_tokens, batch_size):
    lengths = random_lengths() + [(500, 3)]  # longer than any budget: a batch of its own
    for shuffle in (True, False):
        batches = bucket_batches(lengths, max_tokens, batch_size, shuffle=shuffle, seed=3, epoch=1)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))
        for b in batches:
            if batch_size:
                assert len(b) <= batch_size
            if max_tokens and len(b) > 1:
                assert len(b) * max(max(lengths[i]) for i in b) <= max_tokens
        if max_tokens:
            assert [len(lengths) - 1] in batches


def test_shuffling_is_by_seed_and_epoch():
    lengths = random_lengths()
    a = bucket_batches(lengths, 1000, seed=1, epoch=0)
    assert a == bucket_batches(lengths, 1000, seed=1, epoch=0)
    assert a != bucket_batches(lengths, 1000, seed=1, epoch=1)
    assert a != bucket_batches(lengths, 1000, seed=2, epoch=0)


def test_bucketing_cuts_padding():
    lengths = random_lengths()
    def padded(batches):
        return sum(len(b) * max(max(lengths[i]) for i in b) for b in batches)
    bucketed = bucket_batches(lengths, 0, 32, seed=1)
    order = list(range(len(lengths)))
    random.Random(1).shuffle(order)
    unbucketed = [order[i:i + 32] for i in range(0, len(order), 32)]
    assert padded(bucketed) < 0.6 * padded(unbucketed)


def test_padded_tensors_lengths_and_masks():
    examples = [make_example([5, 6, 7], [8]), make_example([9], [10, 11, 12, 13])]
    batch = collate(examples, [1, 0])
    assert batch.src.tolist() == [[9, EOS, PAD, PAD], [5, 6, 7, EOS]]
    assert batch.tgt.tolist() == [[BOS, 10, 11, 12, 13, EOS], [BOS, 8, EOS, PAD, PAD, PAD]]
    assert batch.src_lengths.tolist() == [2, 4] and batch.tgt_lengths.tolist() == [6, 3]
    assert torch.equal(batch.src_mask, batch.src != PAD) and torch.equal(batch.tgt_mask, batch.tgt != PAD)
    assert batch.indices.tolist() == [1, 0] and batch.src.dtype == torch.long


def test_iterator_covers_the_split_each_epoch():
    rng = random.Random(0)
    examples = [make_example([4] * rng.randint(1, 30), [4] * rng.randint(1, 30)) for _ in range(500)]
    it = BatchIterator(examples, DataConfig(max_tokens=300, shuffle_seed=5))
    seen = []
    for epoch in range(2):
        it.set_epoch(epoch)
        indices = [i for batch in it for i in batch.indices.tolist()]
        assert sorted(indices) == list(range(500))
        seen.append(indices)
    assert seen[0] != seen[1]
