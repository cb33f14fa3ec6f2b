"""Reference decoding over the models' encode / decode_step interface."""

from __future__ import annotations

import torch

from seq2seq.data.tokenizers import BOS, EOS, PAD


@torch.no_grad()
def greedy_search(model, src, src_lengths, max_len: int) -> list[list[int]]:
    """Batched greedy search; returns each sentence's ids without <bos>/<eos>.

    Ties go to the lowest token id (torch.argmax returns the first maximum)."""
    state = model.encode(src, src_lengths)
    prev = torch.full((src.size(0),), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    out = []
    for _ in range(max_len):
        log_probs, state, _ = model.decode_step(prev, state)
        prev = log_probs.argmax(-1).masked_fill(done, PAD)
        out.append(prev)
        done |= prev == EOS
        if done.all():
            break
    rows = torch.stack(out, 1).tolist() if out else [[] for _ in range(src.size(0))]
    return [[t for t in (row[: row.index(EOS)] if EOS in row else row) if t != PAD] for row in rows]
