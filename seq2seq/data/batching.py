"""Length-bucketed batches of padded id tensors.

An encoded example is ``(src_ids, tgt_ids)`` where the source ends with ``<eos>`` and the
target is ``<bos> ... <eos>`` (a model feeds ``tgt[:, :-1]`` and predicts ``tgt[:, 1:]``).

Batches are made the way fairseq and torchtext's BucketIterator make them: shuffle the
examples, sort each pool of about ``bucket_pool`` batches by length so a batch holds
sentences of similar length (little padding), cut the pool into batches under a budget of
padded tokens (or a sentence count), then shuffle the order of the batches. Every example
appears in exactly one batch per epoch; one longer than the whole budget gets a batch of
its own rather than being dropped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from seq2seq.data.tokenizers import BOS, EOS, PAD

Example = tuple[list[int], list[int]]


@dataclass
class Batch:
    src: torch.Tensor  # (batch, src_len) int64, PAD after each sentence
    src_lengths: torch.Tensor  # (batch,) int64
    src_mask: torch.Tensor  # (batch, src_len) bool, True on real tokens
    tgt: torch.Tensor  # (batch, tgt_len) int64, <bos> ... <eos> then PAD
    tgt_lengths: torch.Tensor
    tgt_mask: torch.Tensor
    indices: torch.Tensor  # (batch,) position of each sentence in its split

    def __len__(self) -> int:
        return self.src.size(0)

    @property
    def padded_tokens(self) -> int:
        return len(self) * max(self.src.size(1), self.tgt.size(1))

    def to(self, device) -> "Batch":
        return Batch(**{k: v.to(device) for k, v in vars(self).items()})

    def select(self, rows: list[int]) -> "Batch":
        """The given sentences only, with padding trimmed to their longest."""
        idx = torch.tensor(rows, dtype=torch.long)
        s, t = int(self.src_lengths[idx].max()), int(self.tgt_lengths[idx].max())
        return Batch(self.src[idx, :s], self.src_lengths[idx], self.src_mask[idx, :s], self.tgt[idx, :t],
                     self.tgt_lengths[idx], self.tgt_mask[idx, :t], self.indices[idx])


def make_example(src_ids: list[int], tgt_ids: list[int]) -> Example:
    return list(src_ids) + [EOS], [BOS] + list(tgt_ids) + [EOS]


def pad(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max()) if len(seqs) else 0), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    mask = torch.arange(out.size(1)).unsqueeze(0) < lengths.unsqueeze(1)
    return out, lengths, mask


def collate(examples: Sequence[Example], indices: Sequence[int]) -> Batch:
    src, src_lengths, src_mask = pad([examples[i][0] for i in indices])
    tgt, tgt_lengths, tgt_mask = pad([examples[i][1] for i in indices])
    return Batch(src, src_lengths, src_mask, tgt, tgt_lengths, tgt_mask, torch.tensor(list(indices), dtype=torch.long))


def bucket_batches(
    lengths: Sequence[tuple[int, int]],
    max_tokens: int = 0,
    batch_size: int = 0,
    shuffle: bool = True,
    seed: int = 1,
    epoch: int = 0,
    bucket_pool: int = 100,
) -> list[list[int]]:
    """Index lists, one per batch, each under ``max_tokens`` padded tokens (counting the
    longer side) and at most ``batch_size`` sentences; either limit may be 0 (off)."""
    if max_tokens <= 0 and batch_size <= 0:
        raise ValueError("bucket_batches needs max_tokens > 0 or batch_size > 0")
    order = list(range(len(lengths)))
    rng = random.Random(f"{seed}:{epoch}")
    if shuffle:
        rng.shuffle(order)
        # Pool size in sentences: enough for bucket_pool typical batches.
        mean_len = max(sum(max(l) for l in lengths) / max(len(lengths), 1), 1)
        per_batch = batch_size or max(int(max_tokens / mean_len), 1)
        pool = max(per_batch * bucket_pool, 1)
    else:
        pool = max(len(order), 1)
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: (lengths[i][0], lengths[i][1], i))
        batch: list[int] = []
        longest = 0
        for i in chunk:
            new_longest = max(longest, *lengths[i])
            too_many = batch_size > 0 and len(batch) + 1 > batch_size
            too_long = max_tokens > 0 and (len(batch) + 1) * new_longest > max_tokens
            if batch and (too_many or too_long):
                batches.append(batch)
                batch, new_longest = [], max(lengths[i])
            batch.append(i)
            longest = new_longest
        if batch:
            batches.append(batch)
    if shuffle:
        rng.shuffle(batches)
    return batches


class BatchIterator:
    """Batches of one split, re-bucketed and re-shuffled for every epoch."""

    def __init__(self, examples: Sequence[Example], cfg, shuffle: bool = True):
        self.examples = examples
        self.lengths = [(len(s), len(t)) for s, t in examples]
        self.cfg, self.shuffle = cfg, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batch_indices(self) -> list[list[int]]:
        return bucket_batches(
            self.lengths, self.cfg.max_tokens, self.cfg.batch_size, self.shuffle,
            self.cfg.shuffle_seed, self.epoch, self.cfg.bucket_pool,
        )

    def __len__(self) -> int:
        return len(self.batch_indices())

    def __iter__(self) -> Iterator[Batch]:
        for indices in self.batch_indices():
            yield collate(self.examples, indices)
