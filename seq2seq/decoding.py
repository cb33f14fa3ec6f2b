"""The reference decoder: greedy and batched beam search over the models' encode /
decode_step interface. It defines the behaviour the C++ engine reproduces token for token.

Rules (DecodingOptions in config.py holds the numbers):
- A hypothesis's score is the sum of its tokens' log-probabilities, the final <eos>
  included. Live beams are ranked by that sum; the length penalty is applied once, when a
  hypothesis ends, and finished hypotheses are ranked by the penalized score.
- Each step, a sentence's candidates (beam x vocabulary) are ordered by score, ties going
  to the lowest token id, then to the lowest beam index. Walking that order, an <eos>
  candidate ends a hypothesis if it ranks within the first beam_size candidates; other
  candidates become the next beams until there are beam_size of them.
- With early_stop, a sentence is finished once beam_size hypotheses have ended; at its
  maximum length every live beam is forced to end. Finished sentences leave the batch.
- A sentence is also finished, early_stop or not, once its n_best-th best ended hypothesis
  scores at least what its best live beam could still reach (``settled``): the results are
  those of searching on, in fewer steps.
- n-best lists are ordered by penalized score; equal scores keep the order of ending.
- Greedy search takes the highest log-probability, ties to the lowest token id; it gives
  the same tokens and scores as beam search with beam_size 1.
- With no_repeat_ngram_size N, a token that would complete an N-gram the hypothesis
  already holds is removed from its candidates after the log-softmax (the others keep
  their log-probabilities), as <pad> and <bos> are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seq2seq.config import DecodingOptions, validate_decoding_options
from seq2seq.data.tokenizers import BOS, EOS, PAD
from seq2seq.models import reorder_state

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    tokens: list[int]  # without <bos> and <eos>
    score: float  # log_prob after the length penalty
    log_prob: float  # summed log-probabilities, <eos> included
    attention: torch.Tensor | None = None  # (len(tokens) + 1, ...) : one row per output step, <eos> included


def length_penalty(log_prob: float, length: int, opts: DecodingOptions) -> float:
    """The penalized score of a hypothesis of ``length`` tokens counting its <eos>."""
    if opts.length_penalty == "gnmt":
        return log_prob / ((5.0 + length) / 6.0) ** opts.alpha
    if opts.length_penalty == "average":
        return log_prob / length
    return log_prob


def settled(ended: list[Hypothesis], best_live: float, max_len: int, opts: DecodingOptions) -> bool:
    """Whether searching on can no longer change a sentence's n-best list. A log-probability
    only falls as a hypothesis grows, and every penalty divides it by a factor that grows
    with the length, so the best score a live beam can still end with is its log-probability
    penalized at the longest length it may reach (max_len tokens and the <eos>). Later
    hypotheses that tie rank after the earlier ones (a stable sort), so ties settle too."""
    if len(ended) < opts.n_best:
        return False
    nth = sorted((h.score for h in ended), reverse=True)[opts.n_best - 1]
    return nth >= length_penalty(best_live, max_len + 1, opts)


def length_limits(src_lengths: torch.Tensor, opts: DecodingOptions) -> tuple[list[int], list[int]]:
    """Per-sentence (min, max) output lengths; src_lengths count the appended <eos>."""
    mins, maxs = [], []
    for n in (src_lengths - 1).tolist():
        hi = opts.max_length
        if opts.max_length_ratio:
            hi = min(hi, math.floor(opts.max_length_ratio * n) + opts.max_length_extra)
        hi = max(hi, 1)
        mins.append(min(max(opts.min_length, math.floor(opts.min_length_ratio * n)), hi))
        maxs.append(hi)
    return mins, maxs


def constrain(log_probs: torch.Tensor, step: int, min_len: torch.Tensor, max_len: torch.Tensor) -> torch.Tensor:
    """Mask what may not be produced at ``step`` (tokens produced so far) for each row."""
    log_probs = log_probs.float().clone()
    log_probs[:, PAD] = NEG_INF
    log_probs[:, BOS] = NEG_INF
    log_probs[step < min_len, EOS] = NEG_INF
    at_max = step >= max_len
    if at_max.any():
        eos = log_probs[at_max, EOS]
        log_probs[at_max] = NEG_INF
        log_probs[at_max, EOS] = eos
    return log_probs


def repeating_tokens(tokens: list[int], n: int) -> set[int]:
    """The tokens that would complete an n-gram ``tokens`` already holds: those that
    followed each earlier occurrence of its last n - 1 tokens (n = 1: every token in it)."""
    tail = tokens[len(tokens) - n + 1:] if n > 1 else []
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i:i + n - 1] == tail}


def block_repeats(log_probs: torch.Tensor, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """log_probs with -inf where a row's next token would repeat one of its n-grams."""
    if n:
        for row, seq in enumerate(tokens.tolist()):
            banned = sorted(repeating_tokens(seq, n))
            if banned:
                log_probs[row, banned] = NEG_INF
    return log_probs


def trimmed(history: torch.Tensor | None, row: int, src_len) -> torch.Tensor | None:
    """One hypothesis's attention rows, without the columns of its batch's padding."""
    return None if history is None else history[row, ..., : int(src_len)].cpu()


def decode(model, src, src_lengths, opts: DecodingOptions) -> list[list[Hypothesis]]:
    """The n-best hypotheses of every sentence: greedy when beam_size is 1."""
    validate_decoding_options(opts)
    if opts.beam_size == 1:
        return greedy_search(model, src, src_lengths, opts)
    return beam_search(model, src, src_lengths, opts)


@torch.inference_mode()
def greedy_search(model, src, src_lengths, opts: DecodingOptions = DecodingOptions(beam_size=1)):
    model.eval()
    n, device = src.size(0), src.device
    mins, maxs = length_limits(src_lengths, opts)
    min_len, max_len = torch.tensor(mins, device=device), torch.tensor(maxs, device=device)
    state = model.encode(src, src_lengths)
    live = torch.arange(n, device=device)  # sentence of each row
    prev = torch.full((n,), BOS, dtype=torch.long, device=device)
    log_prob = torch.zeros(n, dtype=torch.float32, device=device)
    tokens = torch.zeros((n, 0), dtype=torch.long, device=device)
    history: torch.Tensor | None = None
    results: list[list[Hypothesis]] = [[] for _ in range(n)]
    step = 0
    while live.numel():
        step_log_probs, state, attention = model.decode_step(prev, state)
        step_log_probs = constrain(step_log_probs, step, min_len[live], max_len[live])
        step_log_probs = block_repeats(step_log_probs, tokens, opts.no_repeat_ngram_size)
        best, prev = step_log_probs.max(-1)  # the first maximum: the lowest token id
        log_prob = log_prob + best
        if opts.return_attention and attention is not None:
            step_att = attention.float().unsqueeze(1)
            history = step_att if history is None else torch.cat([history, step_att], 1)
        ended = prev == EOS
        for row in ended.nonzero().flatten().tolist():
            lp, sentence = log_prob[row].item(), live[row].item()
            results[sentence] = [Hypothesis(tokens[row].tolist(), length_penalty(lp, step + 1, opts), lp,
                                            trimmed(history, row, src_lengths[sentence]))]
        # A row left without any allowed token (every one repeats an n-gram, and <eos> is
        # below the minimum length) ends without a hypothesis, as in beam search.
        keep = (~ended & (best > NEG_INF)).nonzero().flatten()
        live, prev, log_prob = live[keep], prev[keep], log_prob[keep]
        tokens = torch.cat([tokens[keep], prev.unsqueeze(1)], 1)
        history = None if history is None else history[keep]
        state = reorder_state(state, keep)
        step += 1
    return results


@torch.inference_mode()
def beam_search(model, src, src_lengths, opts: DecodingOptions):
    model.eval()
    n, k, device = src.size(0), opts.beam_size, src.device
    mins, maxs = length_limits(src_lengths, opts)
    min_len, max_len = torch.tensor(mins, device=device), torch.tensor(maxs, device=device)
    state = reorder_state(model.encode(src, src_lengths), torch.arange(n, device=device).repeat_interleave(k))
    live = list(range(n))  # sentence of each block of k rows
    scores = torch.full((n, k), NEG_INF, device=device)
    scores[:, 0] = 0.0  # the k beams start identical: only the first one may expand
    prev = torch.full((n * k,), BOS, dtype=torch.long, device=device)
    tokens = torch.zeros((n * k, 0), dtype=torch.long, device=device)
    history: torch.Tensor | None = None
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    step = 0
    while live:
        rows_live = torch.tensor(live, device=device).repeat_interleave(k)
        step_log_probs, state, attention = model.decode_step(prev, state)
        step_log_probs = constrain(step_log_probs, step, min_len[rows_live], max_len[rows_live])
        step_log_probs = block_repeats(step_log_probs, tokens, opts.no_repeat_ngram_size)
        vocab = step_log_probs.size(-1)
        total = scores.view(-1, 1) + step_log_probs  # (blocks * k, vocab)
        # Token-major order, so that a stable sort breaks ties by lowest token id, then beam.
        flat = total.view(len(live), k, vocab).transpose(1, 2).reshape(len(live), vocab * k)
        cand_scores, cand = flat.sort(dim=1, descending=True, stable=True)
        width = min(2 * k, vocab * k)
        cand_scores, cand = cand_scores[:, :width].tolist(), cand[:, :width].tolist()
        if opts.return_attention and attention is not None:
            step_att = attention.float().unsqueeze(1)
            history = step_att if history is None else torch.cat([history, step_att], 1)

        next_rows, next_tokens, next_scores, next_live = [], [], [], []
        for block, sentence in enumerate(live):
            beams = []
            for rank in range(width):
                score = cand_scores[block][rank]
                if score == NEG_INF:
                    break
                token, beam = divmod(cand[block][rank], k)
                row = block * k + beam
                if token == EOS:
                    if rank < k:
                        finished[sentence].append(Hypothesis(
                            tokens[row].tolist(), length_penalty(score, step + 1, opts), score,
                            trimmed(history, row, src_lengths[sentence])))
                else:
                    beams.append((row, token, score))
                    if len(beams) == k:
                        break
            if (not beams or (opts.early_stop and len(finished[sentence]) >= k)
                    or settled(finished[sentence], beams[0][2], maxs[sentence], opts)):
                continue
            beams += [(beams[-1][0], beams[-1][1], NEG_INF)] * (k - len(beams))  # dead fillers
            next_live.append(sentence)
            for row, token, score in beams:
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
        live = next_live
        if not live:
            break
        rows = torch.tensor(next_rows, device=device)
        prev = torch.tensor(next_tokens, dtype=torch.long, device=device)
        scores = torch.tensor(next_scores, device=device).view(len(live), k)
        tokens = torch.cat([tokens[rows], prev.unsqueeze(1)], 1)
        history = None if history is None else history[rows]
        state = reorder_state(state, rows)
        step += 1
    return [sorted(hyps, key=lambda h: -h.score)[: opts.n_best] for hyps in finished]
