import itertools
import math

import pytest
import torch

from seq2seq.config import DecodingOptions, ModelConfig
from seq2seq.data import BOS, EOS, PAD, UNK, make_example
from seq2seq.data.batching import collate
from seq2seq.decoding import beam_search, decode, greedy_search, length_limits, length_penalty
from seq2seq.models import build_model
from tests.test_models import FAMILIES, SMALL, batch_of, model


def scored(m, src, out):
    """Log-probability of <bos> out <eos> given src, by teacher forcing (an independent path)."""
    batch = collate([make_example(src, out)], [0])
    log_probs = m(batch.src, batch.src_lengths, batch.tgt[:, :-1])[0]
    return log_probs.gather(-1, batch.tgt[0, 1:].unsqueeze(-1)).sum().item()


@pytest.mark.parametrize("family", ["lstm", "bahdanau", "luong-concat", "transformer-pre"])
@pytest.mark.parametrize("penalty", ["none", "gnmt", "average"])
def test_exhaustive_beam_equals_brute_force(family, penalty):
    """With a beam as wide as the search space, the n-best list is every possible output,
    scored as teacher forcing scores it and ranked by the penalized score."""
    torch.manual_seed(3)
    cfg = dict(SMALL, src_vocab=6, tgt_vocab=6)  # outputs over {<unk>, 4, 5}
    m = build_model(ModelConfig(dropout=0.0, **cfg, **FAMILIES[family])).eval()
    src = [4, 5, 1, 4]
    opts = DecodingOptions(beam_size=40, n_best=40, length_penalty=penalty, max_length=3,
                           max_length_ratio=0, early_stop=False)
    batch = batch_of([(src, [])])
    hyps = beam_search(m, batch.src, batch.src_lengths, opts)[0]
    everything = [list(seq) for n in range(4) for seq in itertools.product([UNK, 4, 5], repeat=n)]
    expected = {tuple(s): scored(m, src, s) for s in everything}
    assert len(hyps) == 40 and {tuple(h.tokens) for h in hyps} == set(expected)
    for h in hyps:
        assert h.log_prob == pytest.approx(expected[tuple(h.tokens)], abs=1e-5)
        assert h.score == pytest.approx(length_penalty(h.log_prob, len(h.tokens) + 1, opts), abs=1e-6)
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    best = max(expected, key=lambda s: length_penalty(expected[s], len(s) + 1, opts))
    assert tuple(hyps[0].tokens) == best


def has_repeated_ngram(seq, n):
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("family", ["bahdanau", "transformer-pre"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_beam_keeps_exactly_the_outputs_without_repeats(family, n):
    """Over the whole search space, the n-best list is every output without a repeated
    n-gram, with its teacher-forced log-probability: blocking removes candidates and
    leaves the others' scores as they were."""
    torch.manual_seed(5)
    cfg = dict(SMALL, src_vocab=6, tgt_vocab=6)  # outputs over {<unk>, 4, 5}
    m = build_model(ModelConfig(dropout=0.0, **cfg, **FAMILIES[family])).eval()
    src = [4, 5, 1, 4]
    everything = [list(seq) for k in range(5) for seq in itertools.product([UNK, 4, 5], repeat=k)]
    allowed = {tuple(s): scored(m, src, s) for s in everything if not has_repeated_ngram(s, n)}
    assert 0 < len(allowed) < len(everything)
    opts = DecodingOptions(beam_size=len(allowed), n_best=len(allowed), length_penalty="none", max_length=4,
                           max_length_ratio=0, early_stop=False, no_repeat_ngram_size=n)
    batch = batch_of([(src, [])])
    hyps = beam_search(m, batch.src, batch.src_lengths, opts)[0]
    assert {tuple(h.tokens) for h in hyps} == set(allowed)
    for h in hyps:
        assert h.log_prob == pytest.approx(allowed[tuple(h.tokens)], abs=1e-5)


@pytest.mark.parametrize("family", ["lstm", "transformer-pre"])
def test_no_repeat_ngram_greedy_takes_the_best_token_that_repeats_nothing(family):
    m = model(family).eval()
    src = [5, 6, 7, 8, 9, 10]
    opts = DecodingOptions(beam_size=1, max_length=12, max_length_ratio=0, min_length=12, no_repeat_ngram_size=2)
    batch = batch_of([(src, [])])
    (h,) = greedy_search(m, batch.src, batch.src_lengths, opts)[0]
    assert len(h.tokens) == 12 and not has_repeated_ngram(h.tokens, 2)
    # Step by step by teacher forcing: each token is the best one that neither repeats a
    # bigram nor is <pad>/<bos>/<eos> (below the minimum length).
    for t, token in enumerate(h.tokens):
        prefix = collate([make_example(src, h.tokens[:t])], [0])
        log_probs = m(prefix.src, prefix.src_lengths, prefix.tgt[:, :-1])[0, -1].clone()
        log_probs[[PAD, BOS, EOS]] = -math.inf
        for cand in range(log_probs.numel()):
            if has_repeated_ngram(h.tokens[:t] + [cand], 2):
                log_probs[cand] = -math.inf
        assert token == int(log_probs.argmax())
    assert h.log_prob == pytest.approx(scored(m, src, h.tokens), abs=1e-4)


def test_a_sentence_left_without_allowed_tokens_gets_no_hypothesis():
    # Outputs over {<unk>, 4, 5} with no token twice: the fourth token cannot be chosen,
    # and <eos> is held back until 5 tokens.
    torch.manual_seed(5)
    m = build_model(ModelConfig(dropout=0.0, **dict(SMALL, src_vocab=6, tgt_vocab=6), **FAMILIES["bahdanau"])).eval()
    batch = batch_of([([4, 5, 1, 4], [])])
    for beam in (1, 3):
        opts = DecodingOptions(beam_size=beam, min_length=5, max_length_ratio=0, no_repeat_ngram_size=1)
        assert decode(m, batch.src, batch.src_lengths, opts) == [[]]
        opts = DecodingOptions(beam_size=beam, min_length=3, max_length_ratio=0, no_repeat_ngram_size=1)
        (h,) = decode(m, batch.src, batch.src_lengths, opts)[0]
        assert sorted(h.tokens) == [UNK, 4, 5]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_beam_one_equals_greedy(family):
    m = model(family).eval()
    batch = batch_of([([5, 6, 7, 8], []), ([12, 13], []), ([9, 10, 11, 4, 5, 6, 7], [])])
    opts = DecodingOptions(beam_size=1, max_length_ratio=1.5, max_length_extra=3)
    greedy = greedy_search(m, batch.src, batch.src_lengths, opts)
    beam = beam_search(m, batch.src, batch.src_lengths, opts)
    for g, b in zip(greedy, beam):
        assert g[0].tokens == b[0].tokens
        assert g[0].log_prob == pytest.approx(b[0].log_prob, abs=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("beam", [1, 5])
def test_alone_equals_inside_a_batch_of_64(family, beam):
    m = model(family).eval()
    gen = torch.Generator().manual_seed(7)
    sentences = [(torch.randint(4, SMALL["src_vocab"], (int(n),), generator=gen).tolist(), [])
                 for n in torch.randint(1, 16, (64,), generator=gen)]
    batch = batch_of(sentences)
    opts = DecodingOptions(beam_size=beam, n_best=min(beam, 2), max_length_ratio=1.0, max_length_extra=4,
                           return_attention=True)
    together = decode(m, batch.src, batch.src_lengths, opts)
    for i in range(0, 64, 5):
        alone = batch_of([sentences[i]])
        (hyps,) = decode(m, alone.src, alone.src_lengths, opts)
        assert [h.tokens for h in hyps] == [h.tokens for h in together[i]]
        for a, b in zip(hyps, together[i]):
            assert a.score == pytest.approx(b.score, abs=1e-5)
            if a.attention is not None:
                torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=0)
                assert a.attention.shape[0] == len(a.tokens) + 1
                assert a.attention.shape[-1] == len(sentences[i][0]) + 1


class TableModel(torch.nn.Module):
    """Emits fixed log-probabilities per step (rows of ``table``), the same for every beam."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.log_softmax(torch.tensor(table, dtype=torch.float32), -1)

    def encode(self, src, src_lengths):
        return {"step": torch.zeros(src.size(0), dtype=torch.long)}

    def decode_step(self, prev, state):
        step = state["step"]
        log_probs = self.table[step.clamp(max=len(self.table) - 1)]
        return log_probs, {"step": step + 1}, None


def run(m, opts, src_len=4):
    batch = batch_of([(list(range(4, 4 + src_len)), [])])
    return decode(m, batch.src, batch.src_lengths, opts)[0]


def test_ties_go_to_the_lowest_token_then_beam():
    uniform = TableModel([[0.0] * 8])
    (h,) = run(uniform, DecodingOptions(beam_size=1, max_length=3, max_length_ratio=0))
    assert h.tokens == [UNK, UNK, UNK]  # <pad> and <bos> are never produced; <unk> is the lowest id left
    hyps = run(uniform, DecodingOptions(beam_size=3, n_best=3, max_length=2, max_length_ratio=0,
                                         length_penalty="none"))
    # Step 0 ranks <unk>, <eos>, 4, 5, ...: <eos> ends the empty hypothesis (rank 1 < beam 3),
    # beams [<unk>], [4], [5]. Step 1: all ties; <unk> after beam 0, 1, 2 come first and <eos>
    # ranks 3rd or later, so nothing ends; step 2 forces <eos> for all three.
    assert [h.tokens for h in hyps] == [[], [UNK, UNK], [4, UNK]]
    assert hyps[0].log_prob == pytest.approx(math.log(1 / 8))  # masking does not renormalize


def test_min_and_max_length_and_penalty_by_hand():
    # <eos> is the likeliest token at every step, token 5 second.
    table = [[-9, -9, -9, 3.0, -1, 1.0, -2, -2]]
    m = TableModel(table)
    (h,) = run(m, DecodingOptions(beam_size=1))
    assert h.tokens == []
    (h,) = run(m, DecodingOptions(beam_size=1, min_length=2))
    assert h.tokens == [5, 5]
    (h,) = run(m, DecodingOptions(beam_size=4, min_length_ratio=0.75), src_len=4)  # floor(0.75 * 4) = 3
    assert h.tokens == [5, 5, 5]
    lp = torch.log_softmax(torch.tensor(table[0]), -1)
    expected = 3 * lp[5].item() + lp[EOS].item()
    assert h.log_prob == pytest.approx(expected, abs=1e-5)
    assert h.score == pytest.approx(expected / ((5 + 4) / 6) ** 0.6, abs=1e-5)
    # <eos> is never likely: the maximum, min(256, floor(2 * 3) + 10) = 16, forces it.
    never = TableModel([[0, 0, 0, -30.0, 1.0, 0, 0, 0]])
    (h,) = run(never, DecodingOptions(beam_size=2), src_len=3)
    assert h.tokens == [4] * 16
    assert length_limits(torch.tensor([4, 11]), DecodingOptions(max_length=12, max_length_ratio=1.5,
                                                                max_length_extra=2)) == ([0, 0], [6, 12])


def test_early_stop_off_searches_to_the_maximum():
    table = [[-9, -9, -9, 0.5, 0.0, 0.2, -9, -9]]
    quick = run(TableModel(table), DecodingOptions(beam_size=2, n_best=2, length_penalty="average"))
    full = run(TableModel(table), DecodingOptions(beam_size=2, n_best=2, length_penalty="average",
                                                  early_stop=False, max_length=6, max_length_ratio=0))
    assert len(quick) == len(full) == 2
    assert full[0].score >= quick[0].score  # a longer search can only find better penalized scores
    assert full[0].score == pytest.approx(max(h.score for h in full))


@pytest.mark.parametrize("bad, match", [
    (dict(beam_size=0), "beam_size must be >= 1"),
    (dict(beam_size=2, n_best=3), "n_best=3 must be between 1 and beam_size=2"),
    (dict(length_penalty="wu"), "length_penalty='wu' is not valid"),
    (dict(max_length=0), "max_length must be >= 1"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be >= 0, got -1"),
])
def test_bad_options_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        run(TableModel([[0.0] * 8]), DecodingOptions(**bad))


class EosLeaning:
    """A model whose every step moves ``bias`` nats towards <eos> (renormalized), so that
    hypotheses end within a few steps, as a trained model's do; counts the rows it decodes."""

    def __init__(self, m, bias: float):
        self.m, self.bias, self.rows = m, bias, 0

    def eval(self):
        return self

    def encode(self, src, src_lengths):
        return self.m.encode(src, src_lengths)

    def decode_step(self, prev, state):
        self.rows += prev.size(0)
        log_probs, state, attention = self.m.decode_step(prev, state)
        log_probs = log_probs.clone()
        log_probs[:, EOS] += self.bias
        return torch.log_softmax(log_probs, -1), state, attention


@pytest.mark.parametrize("family", ["bahdanau", "transformer-pre"])
@pytest.mark.parametrize("penalty, n_best, early_stop", [("none", 1, True), ("gnmt", 1, True),
                                                          ("average", 1, False), ("none", 3, False)])
def test_settled_sentences_stop_with_the_results_of_searching_on(monkeypatch, family, penalty, n_best, early_stop):
    """The early end of a settled sentence changes the number of steps, never the results:
    the same n-best lists, scores and attention as the search with the rule switched off."""
    import seq2seq.decoding as decoding

    gen = torch.Generator().manual_seed(11)
    sentences = [(torch.randint(4, SMALL["src_vocab"], (int(n),), generator=gen).tolist(), [])
                 for n in torch.randint(1, 12, (24,), generator=gen)]
    batch = batch_of(sentences)
    opts = DecodingOptions(beam_size=5, n_best=n_best, length_penalty=penalty, early_stop=early_stop,
                           max_length_ratio=1.5, max_length_extra=4, return_attention=True)
    quick = EosLeaning(model(family), bias=2.5)
    settled = decode(quick, batch.src, batch.src_lengths, opts)
    monkeypatch.setattr(decoding, "settled", lambda *args: False)
    slow = EosLeaning(model(family), bias=2.5)
    searched = decode(slow, batch.src, batch.src_lengths, opts)
    for a, b in zip(settled, searched):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == [h.score for h in b]
        for x, y in zip(a, b):
            torch.testing.assert_close(x.attention, y.attention, atol=0, rtol=0)
    assert quick.rows < slow.rows
