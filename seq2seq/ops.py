"""Shapes of the engine's torch ops (torch.ops.seq2seq.*) for tracing and fake tensors.

Importing this module loads seq2seq._C, which registers the ops and their CPU kernels."""

import torch

from seq2seq import _C  # noqa: F401  (registers the ops)


@torch.library.register_fake("seq2seq::attention")
def _attention_shapes(query, keys, memory, lengths, sentence, v):
    return query.new_empty(query.size(0), memory.size(2)), query.new_empty(query.size(0), keys.size(1))


@torch.library.register_fake("seq2seq::beam_candidates")
def _candidate_shapes(logits, row_scores, eos_rule, banned, eos, group, count):
    blocks = logits.size(0) // group
    return logits.new_empty(blocks, count), logits.new_empty(blocks, count, dtype=torch.long)


@torch.library.register_fake("seq2seq::multi_head_attention")
def _multi_head_attention_shapes(query, keys, values, lengths, sentence, heads):
    return query.new_empty(query.shape), query.new_empty(query.size(0), heads, keys.size(1))


@torch.library.register_fake("seq2seq::add_layer_norm")
def _add_layer_norm_shapes(x, residual, weight, bias, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)
