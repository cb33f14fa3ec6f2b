"""The C++ engine against the Python reference decoder (seq2seq/decoding.py) and its ops
against pure-PyTorch references."""

import json
import os
from dataclasses import replace
import shutil
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seq2seq.config import DecodingOptions
from seq2seq.data import BOS, EOS, PAD
from seq2seq.engine import Engine, converted_matrix, extension
from seq2seq.export import ExportError
from seq2seq.translate import Translator
from tests.exports import int8_agreement, random_export
from tests.test_models import FAMILIES, SMALL

pytest.importorskip("seq2seq._C", reason="the C++ engine is not built")
import seq2seq.ops  # noqa: E402,F401  (the ops' fake-tensor shapes)
# Transformer variants beyond test_models' two: every option the Python model has, and
# layer, head and width counts of their own.
TRANSFORMER_VARIANTS = {
    "transformer-pre-learned-tied": ("transformer-pre", dict(positions="learned", tie_embeddings=True, heads=8,
                                                             enc_layers=1, dec_layers=3)),
    "transformer-post-separate-1-head": ("transformer-post", dict(tie_embeddings=False, positions="sinusoidal",
                                                                  heads=1, d_model=24, ff_dim=40, enc_layers=3,
                                                                  dec_layers=1)),
    "transformer-pre-odd-width": ("transformer-pre", dict(d_model=18, heads=3, ff_dim=20)),
    "transformer-pre-gelu": ("transformer-pre", dict(activation="gelu")),
    # OPUS-MT's: swish, post-norm; and embeddings as they are (Marian's scale_embedding=false)
    "transformer-post-swish-unscaled": ("transformer-post", dict(activation="swish", scale_embeddings=False,
                                                                 positions="learned", tie_embeddings=True)),
}
ENGINE_FAMILIES = sorted(FAMILIES) + sorted(TRANSFORMER_VARIANTS)
TRANSFORMERS = [name for name in ENGINE_FAMILIES if name.startswith("transformer")]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    made = {name: random_export(root / name, name) for name in FAMILIES}
    for name, (family, changes) in TRANSFORMER_VARIANTS.items():
        made[name] = random_export(root / name, family, **changes)
    return made


def random_sources(n, seed, longest=15):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, SMALL["src_vocab"], (int(k),), generator=gen).tolist()
            for k in torch.randint(1, longest + 1, (n,), generator=gen)]


def assert_same(engine_hyps, python_hyps, atol=1e-4):
    assert len(engine_hyps) == len(python_hyps)
    for i, (e, p) in enumerate(zip(engine_hyps, python_hyps)):
        assert [h.tokens for h in e] == [h.tokens for h in p], f"sentence {i}"
        for a, b in zip(e, p):
            assert a.score == pytest.approx(b.score, abs=atol) and a.log_prob == pytest.approx(b.log_prob, abs=atol)
            if b.attention is not None:
                torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------
# Ops against pure-PyTorch references


def attention_reference(query, keys, memory, lengths, sentence, v):
    k, m = keys[sentence], memory[sentence]
    if v is None:
        scores = torch.bmm(k, query.unsqueeze(-1)).squeeze(-1)
    else:
        scores = (torch.tanh(k + query.unsqueeze(1)) * v).sum(-1)
    mask = torch.arange(keys.size(1)) < lengths[sentence].unsqueeze(1)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    return torch.bmm(weights.unsqueeze(1), m).squeeze(1), weights


def attention_inputs(additive, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, S, K, M, R = 3, 7, 16, 12, 8
    query = torch.randn(R, K, generator=g)
    keys, memory = torch.randn(N, S, K, generator=g) * 2, torch.randn(N, S, M, generator=g)
    lengths = torch.tensor([7, 1, 4])
    sentence = torch.tensor([0, 0, 2, 1, 1, 2, 0, 2])
    v = torch.randn(K, generator=g) if additive else None
    return query, keys, memory, lengths, sentence, v


@pytest.mark.parametrize("additive", [False, True])
def test_attention_op_matches_reference(additive):
    args = attention_inputs(additive)
    context, weights = torch.ops.seq2seq.attention(*args)
    ref_context, ref_weights = attention_reference(*args)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(context, ref_context, atol=1e-6, rtol=1e-5)
    assert (weights[3, 1:] == 0).all()  # past the source's length: exactly zero
    # A non-contiguous query gives the same answer.
    q = torch.stack([args[0], args[0]], -1)[..., 0]
    assert not q.is_contiguous()
    torch.testing.assert_close(torch.ops.seq2seq.attention(q, *args[1:])[0], context)
    torch.library.opcheck(torch.ops.seq2seq.attention.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("shape", [(1, 256), (3, 33), (2, 5, 64), (200, 16)])
def test_add_layer_norm_op_matches_torch(shape):
    g = torch.Generator().manual_seed(2)
    d = shape[-1]
    # An offset and a spread unlike a unit normal's: the moments must not lose precision.
    x = torch.randn(*shape, generator=g) * 7 + 40
    residual = torch.randn(*shape, generator=g)
    weight, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    total, normed = torch.ops.seq2seq.add_layer_norm(x, residual, weight, bias, 1e-5)
    assert torch.equal(total, x + residual)
    torch.testing.assert_close(normed, F.layer_norm(x + residual, (d,), weight, bias, 1e-5), atol=2e-5, rtol=1e-5)
    alone, normed_alone = torch.ops.seq2seq.add_layer_norm(x, None, weight, bias, 1e-5)
    assert torch.equal(alone, x)
    torch.testing.assert_close(normed_alone, F.layer_norm(x, (d,), weight, bias, 1e-5), atol=2e-5, rtol=1e-5)
    # A non-contiguous input gives the same answer.
    wide = torch.stack([x, x], -1)[..., 0]
    assert not wide.is_contiguous()
    assert torch.equal(torch.ops.seq2seq.add_layer_norm(wide, residual, weight, bias, 1e-5)[1], normed)
    torch.library.opcheck(torch.ops.seq2seq.add_layer_norm.default, (x, residual, weight, bias, 1e-5),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_add_layer_norm_errors_are_clear():
    x, w = torch.randn(2, 8), torch.ones(8)
    with pytest.raises(ValueError, match=r"weight and bias must hold x's last dimension \(8\) values"):
        torch.ops.seq2seq.add_layer_norm(x, None, torch.ones(7), w, 1e-5)
    with pytest.raises(ValueError, match="residual must be a float32 tensor of x's shape"):
        torch.ops.seq2seq.add_layer_norm(x, torch.randn(2, 7), w, w, 1e-5)
    with pytest.raises(ValueError, match="x must be a float32 tensor"):
        torch.ops.seq2seq.add_layer_norm(x.double(), None, w, w, 1e-5)


def candidates_reference(logits, row_scores, rule, banned, eos, group, count):
    lp = F.log_softmax(logits, -1)
    lp[:, banned] = float("-inf")
    lp[rule == 1, eos] = float("-inf")
    only = lp[rule == 2, eos]
    lp[rule == 2] = float("-inf")
    lp[rule == 2, eos] = only
    total = row_scores.unsqueeze(1) + lp
    blocks, V = logits.size(0) // group, logits.size(1)
    flat = total.view(blocks, group, V).transpose(1, 2).reshape(blocks, V * group)  # token-major
    scores, index = flat.sort(dim=1, descending=True, stable=True)
    scores, index = scores[:, :count], index[:, :count].clone()
    index[scores == float("-inf")] = -1
    return scores, index


def test_beam_candidates_op_matches_reference():
    g = torch.Generator().manual_seed(1)
    group, V = 4, 50
    logits = torch.randn(3 * group, V, generator=g)
    logits[:, 10] = logits[:, 11]  # ties between tokens ...
    logits[1] = logits[0]  # ... and between beams
    row_scores = -torch.rand(3 * group, generator=g) * 3
    row_scores[1] = row_scores[0]
    row_scores[5] = float("-inf")  # a dead beam
    rule = torch.tensor([0, 0, 1, 0, 2, 0, 0, 0, 2, 2, 2, 2], dtype=torch.int8)
    for count in (1, 8, 30):
        args = (logits, row_scores, rule, [PAD, BOS], EOS, group, count)
        scores, index = torch.ops.seq2seq.beam_candidates(*args)
        ref_scores, ref_index = candidates_reference(*args)
        torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=0)
        assert torch.equal(index, ref_index)
    # The last block can only end: 4 <eos> candidates, the rest missing.
    assert (index[2, :4] // group == EOS).all() and (index[2, 4:] == -1).all()
    torch.library.opcheck(torch.ops.seq2seq.beam_candidates.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("V", [5, 16, 17, 4003])
def test_beam_candidates_over_vocabularies_that_fill_16_lanes_or_not(V):
    # The kernel runs 16 tokens at a time with its own exp; widely spread logits, a row
    # with a token far below the others and vocabularies with and without a tail check it
    # against log_softmax in float64.
    g = torch.Generator().manual_seed(V)
    group, count = 3, 6
    logits = torch.randn(2 * group, V, generator=g) * 12
    logits[0, -1] = -1e4
    logits[1, 0] = logits[2, -1] = float("-inf")  # masked tokens, in a full block of 16 and in the tail
    logits[3] = logits[3] - 80  # the same softmax as logits[3]: a shift must not move anything
    row_scores = -torch.rand(2 * group, generator=g) * 4
    rule = torch.zeros(2 * group, dtype=torch.int8)
    args = (logits, row_scores, rule, [], min(3, V - 1), group, min(count, V * group))
    scores, index = torch.ops.seq2seq.beam_candidates(*args)
    ref_scores, ref_index = candidates_reference(logits.double(), row_scores.double(), *args[2:])
    torch.testing.assert_close(scores.double(), ref_scores, atol=1e-5, rtol=0)
    assert torch.equal(index, ref_index)
    assert torch.isfinite(scores).all()


def test_beam_candidates_tie_in_a_later_row_wins_by_its_lower_token():
    # Two beams with the same scores, one the other's tokens shifted by a block of 16: the
    # later beam's best token has the lower id and ties the list's only entry exactly, so
    # the 16-token filter must let an equal value through to the tie rule.
    logits = torch.full((2, 48), -200.0)
    logits[0, 20], logits[0, 30] = 0.0, -1.0
    logits[1] = logits[0].roll(-16)
    args = (logits, torch.zeros(2), torch.zeros(2, dtype=torch.int8), [], 47, 2, 1)
    scores, index = torch.ops.seq2seq.beam_candidates(*args)
    assert index.tolist() == [[4 * 2 + 1]] and candidates_reference(*args)[1].tolist() == [[4 * 2 + 1]]
    torch.testing.assert_close(scores, candidates_reference(*args)[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("rows,inputs,outputs", [(2, 640, 4000), (5, 256, 768), (32, 17, 33), (160, 640, 4003)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_product_matches_torch_linear(rows, inputs, outputs, bias):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    gen = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, inputs, generator=gen), torch.randn(outputs, inputs, generator=gen)
    b = torch.randn(outputs, generator=gen) if bias else None
    got = torch.ops.seq2seq.linear_onednn(x, w, b)
    assert got.shape == (rows, outputs)
    # float32 sums in another order: within a few units of rounding of terms of size ~sqrt(inputs)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5 * inputs ** 0.5)
    torch.testing.assert_close(torch.ops.seq2seq.linear_onednn(x, w.t().contiguous().t(), b), got)
    # The feed-forward's ReLU, applied by oneDNN as it writes the product.
    torch.testing.assert_close(torch.ops.seq2seq.linear_onednn(x, w, b, relu=True), F.relu(F.linear(x, w, b)),
                               rtol=1e-5, atol=1e-5 * inputs ** 0.5)


def int8_rows_or_skip(x, w, scale=None, b=None):
    try:
        return torch.ops.seq2seq.linear_int8_rows(x, w, scale, b)
    except RuntimeError as e:
        if "no AVX2" in str(e):
            pytest.skip("this build has no AVX2 int8 kernel")
        raise


@pytest.mark.parametrize("rows,inputs,outputs", [(1, 256, 4000), (2, 1024, 256), (3, 17, 33), (8, 100, 7)])
def test_int8_rows_product_is_the_exact_integer_product(rows, inputs, outputs):
    gen = torch.Generator().manual_seed(inputs)
    x, w, b = (torch.randn(rows, inputs, generator=gen), torch.randn(outputs, inputs, generator=gen),
               torch.randn(outputs, generator=gen))
    x[0, :] = 0  # a row of zeros has no scale: its product is the bias
    got = int8_rows_or_skip(x, w, None, b)
    # The same quantization done here: weights per output channel, each row of x on its own
    # scale, both to -127..127; the sums of integer products are exact.
    w_scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
    qw = (w / w_scale[:, None]).round().clamp(-127, 127)
    amax = x.abs().amax(1)
    qx = (x * torch.where(amax > 0, 127 / amax, 0)[:, None]).round().clamp(-127, 127)
    sums = (qx.double() @ qw.double().t()).float()
    expected = sums * ((amax / 127)[:, None] * w_scale[None, :]) + b
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[0], b, rtol=0, atol=0)
    # Within int8's rounding of the float32 product.
    exact = F.linear(x, w, b)
    assert ((got - exact).abs().max() / exact.abs().max()).item() < 0.03
    # Each row is quantized on its own: its result does not depend on the rows beside it.
    for r in range(rows):
        assert torch.equal(int8_rows_or_skip(x[r:r + 1], w, None, b)[0], got[r])
    # Weights quantized once and passed with their scales give the same.
    assert torch.equal(int8_rows_or_skip(x, qw.to(torch.int8), w_scale, b), got)


def test_int8_rows_errors_are_clear():
    x, w = torch.randn(2, 8), torch.randn(3, 9)
    with pytest.raises((ValueError, RuntimeError), match="x has 8 columns, the weights 9|no AVX2"):
        torch.ops.seq2seq.linear_int8_rows(x, w, None, None)
    with pytest.raises(RuntimeError, match="float32 scales"):
        torch.ops.seq2seq.linear_int8_rows(x, w.to(torch.int8)[:, :8], None, None)


def assert_same_bits_on_one_and_two_threads(product):
    # Each column is summed in the same order whichever thread takes it: split or not, the
    # same bits.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = product()
        torch.set_num_threads(2)
        assert torch.equal(product(), alone)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("inputs,outputs,rows", [(256, 4000, 1), (1024, 256, 1), (17, 33, 1), (7, 13, 3),
                                                 (256, 1024, 5), (65, 130, 7), (256, 768, 13), (31, 40, 17),
                                                 (40, 70, 25)])
@pytest.mark.parametrize("bias", [True, False])
def test_float_rows_product_matches_the_double_product(inputs, outputs, rows, bias):
    gen = torch.Generator().manual_seed(inputs * outputs)
    x, w = torch.randn(rows, inputs, generator=gen), torch.randn(outputs, inputs, generator=gen)
    b = torch.randn(outputs, generator=gen) if bias else None
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    got = torch.ops.seq2seq.linear_float_rows(x, w, b)
    assert got.shape == (rows, outputs) and got.dtype == torch.float32
    # Each row's numbers do not depend on the rows beside it.
    assert torch.equal(torch.ops.seq2seq.linear_float_rows(x[-1:], w, b), got[-1:])
    # float32 sums of terms of size ~1: within a few units of rounding of sqrt(inputs)
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5 * inputs ** 0.5)
    torch.testing.assert_close(torch.ops.seq2seq.linear_float_rows(x, w, b, relu=True).double(), exact.relu(),
                               rtol=1e-5, atol=1e-5 * inputs ** 0.5)
    assert_same_bits_on_one_and_two_threads(lambda: torch.ops.seq2seq.linear_float_rows(x, w, b))


def test_float_rows_errors_are_clear():
    x, w = torch.randn(1, 8), torch.randn(3, 8)
    with pytest.raises((ValueError, RuntimeError), match="at least one row"):
        torch.ops.seq2seq.linear_float_rows(torch.randn(0, 8), w, None)
    with pytest.raises((ValueError, RuntimeError), match="x has 8 columns, the weights 9 inputs"):
        torch.ops.seq2seq.linear_float_rows(x, torch.randn(3, 9), None)
    with pytest.raises((ValueError, RuntimeError), match="bias must hold 3 float32 values"):
        torch.ops.seq2seq.linear_float_rows(x, w, torch.randn(4))


@pytest.mark.parametrize("inputs,outputs,rows", [(256, 4000, 1), (1024, 256, 5), (17, 33, 8), (7, 13, 3),
                                                 (256, 1024, 1), (256, 768, 8), (256, 768, 13), (31, 40, 17),
                                                 (33, 130, 17), (40, 70, 25)])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_rows_product_matches_the_double_product_of_the_rounded_numbers(inputs, outputs, rows, bias):
    gen = torch.Generator().manual_seed(inputs + outputs)
    x, w = torch.randn(rows, inputs, generator=gen), torch.randn(outputs, inputs, generator=gen)
    b = torch.randn(outputs, generator=gen) if bias else None
    # x and the weights in bfloat16, exact products, float32 sums rounded to bfloat16 once.
    exact = F.linear(x.bfloat16().double(), w.bfloat16().double())
    got = torch.ops.seq2seq.linear_bf16_rows(x, w, b)
    assert got.shape == (rows, outputs) and got.dtype == torch.float32
    plain = got - b if bias else got
    torch.testing.assert_close(plain.double(), exact, rtol=2 ** -8, atol=1e-5 * inputs ** 0.5)
    if not bias:  # the sums rounded to bfloat16 before the bias
        assert torch.equal(got.bfloat16().float(), got)
    # Each row's numbers do not depend on the rows beside it; 1 and 2 threads give the same bits.
    assert torch.equal(torch.ops.seq2seq.linear_bf16_rows(x[-1:], w, b), got[-1:])
    assert torch.equal(torch.ops.seq2seq.linear_bf16_rows(x, w, b, relu=True), got.relu())
    assert_same_bits_on_one_and_two_threads(lambda: torch.ops.seq2seq.linear_bf16_rows(x, w, b))


def test_bf16_rows_product_gives_the_batched_products_numbers():
    # The engine takes a few rows through its own kernel and more through oneDNN's bf16
    # product: a sentence alone and in a batch must see the same numbers, bar the order of
    # float32 sums (one bfloat16 unit at most, where a sum lies on a rounding boundary).
    gen = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(5, 256, generator=gen), torch.randn(1024, 256, generator=gen), torch.randn(1024, generator=gen)
    try:
        batched = torch.ops.seq2seq.linear_onednn(x.bfloat16(), w.bfloat16(), None).float() + b
    except RuntimeError:
        pytest.skip("this CPU has no oneDNN bfloat16 product")
    got = torch.ops.seq2seq.linear_bf16_rows(x, w, b)
    differ = (got != batched).sum().item()
    assert differ <= 50, f"{differ} of 5 x 1024 outputs differ from oneDNN's"
    torch.testing.assert_close(got, batched, rtol=2 ** -7, atol=0)


def test_bf16_rows_errors_are_clear():
    x, w = torch.randn(1, 8), torch.randn(3, 8)
    with pytest.raises((ValueError, RuntimeError), match="at least one row"):
        torch.ops.seq2seq.linear_bf16_rows(torch.randn(0, 8), w, None)
    with pytest.raises((ValueError, RuntimeError), match="x has 8 columns, the weights 9 inputs"):
        torch.ops.seq2seq.linear_bf16_rows(x, torch.randn(3, 9), None)
    with pytest.raises((ValueError, RuntimeError), match="bias must hold 3 float32 values"):
        torch.ops.seq2seq.linear_bf16_rows(x, w, torch.randn(4))
    with pytest.raises((ValueError, RuntimeError), match="weight must be float32"):
        torch.ops.seq2seq.linear_bf16_rows(x, w.bfloat16(), None)


def test_op_errors_are_clear():
    query, keys, memory, lengths, sentence, v = attention_inputs(True)
    with pytest.raises(Exception, match="keys' last dimension"):
        torch.ops.seq2seq.attention(query[:, :5], keys, memory, lengths, sentence, v)
    with pytest.raises(Exception, match="lengths must be within"):
        torch.ops.seq2seq.attention(query, keys, memory, torch.tensor([0, 1, 2]), sentence, v)
    with pytest.raises(Exception, match="float32"):
        torch.ops.seq2seq.attention(query.double(), keys, memory, lengths, sentence, v)
    with pytest.raises(Exception, match="multiple of group"):
        torch.ops.seq2seq.beam_candidates(torch.zeros(5, 9), torch.zeros(5), torch.zeros(5, dtype=torch.int8),
                                          [], 3, 2, 2)


# ---------------------------------------------------------------------------------------
# Parity with the Python reference


@pytest.mark.parametrize("family", ENGINE_FAMILIES)
def test_parity_with_python_reference(exports, family):
    engine, reference = Engine(exports[family]), Translator(exports[family])
    sources = random_sources(12, seed=len(family))
    for beam in (1, 5, 10):
        opts = DecodingOptions(beam_size=beam, n_best=min(beam, 3), length_penalty="gnmt",
                               max_length_ratio=1.5, max_length_extra=3, return_attention=True)
        assert_same(engine.translate_ids(sources, opts), reference.decode_ids(sources, opts))


@pytest.mark.parametrize("family", ["bahdanau-gru-bi", "luong-general", "bigru-context-feed", "transformer-pre",
                                    "transformer-post", "bahdanau-copy", "transformer-copy"])
@pytest.mark.parametrize("beam", [1, 5])
def test_alone_equals_inside_a_batch_of_64(exports, family, beam):
    engine = Engine(exports[family])
    sources = random_sources(64, seed=3)
    opts = DecodingOptions(beam_size=beam, n_best=min(beam, 2), max_length_ratio=1.0, max_length_extra=4,
                           return_attention=True)
    together = engine.translate_ids(sources, opts)
    # The same tokens; scores within the parity tolerance, as a lone source's products of a
    # few rows take the engine's own kernels and a batch's larger ones MKL or oneDNN, whose
    # float32 sums run in another order (relative differences of about 1e-6 over a sentence).
    for i in range(0, 64, 7):
        assert_same(engine.translate_ids([sources[i]], opts), [together[i]], atol=1e-4)


def test_an_export_from_before_the_copy_field_loads_without_copy(exports, tmp_path):
    old = Path(shutil.copytree(exports["bahdanau"], tmp_path / "old"))
    config = json.loads((old / "config.json").read_text())
    del config["model"]["copy"]
    (old / "config.json").write_text(json.dumps(config))
    sources, opts = random_sources(6, seed=2), DecodingOptions(beam_size=3)
    assert_same(Engine(old).translate_ids(sources, opts), Engine(exports["bahdanau"]).translate_ids(sources, opts))
    assert Translator(old).model_cfg.copy is False
    config["model"]["copy"] = "yes"
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match='config.json: "model.copy" must be true or false, not "yes"'):
        extension().Engine(str(old))


@pytest.mark.parametrize("opts", [
    DecodingOptions(beam_size=4, length_penalty="average", min_length=3, early_stop=False),
    DecodingOptions(beam_size=3, min_length_ratio=1.0, max_length=6, max_length_ratio=0),
    DecodingOptions(beam_size=1, min_length=2, max_length=4),
    DecodingOptions(beam_size=6, n_best=6, length_penalty="gnmt", alpha=1.0, max_length=1),
    DecodingOptions(beam_size=5, n_best=3, min_length=8, no_repeat_ngram_size=1),
    DecodingOptions(beam_size=4, min_length=12, max_length=16, max_length_ratio=0, no_repeat_ngram_size=2),
    DecodingOptions(beam_size=1, min_length=12, max_length=16, max_length_ratio=0, no_repeat_ngram_size=3),
    DecodingOptions(beam_size=3, min_length=40, max_length=45, max_length_ratio=0, no_repeat_ngram_size=1),
], ids=["average-no-early-stop", "min-ratio-max-abs", "greedy-limits", "max-length-1", "no-repeat-1", "no-repeat-2",
        "greedy-no-repeat-3", "no-repeat-runs-out"])
@pytest.mark.parametrize("family", ["luong-concat", "transformer-post"])
def test_parity_under_length_options(exports, opts, family):
    sources = random_sources(10, seed=11)
    assert_same(Engine(exports[family]).translate_ids(sources, opts), Translator(exports[family]).decode_ids(sources, opts))


def repeats(tokens, n):
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("family", ["lstm", "bahdanau", "transformer-pre", "transformer-copy"])
def test_no_repeat_ngram_parity(exports, family):
    engine, reference = Engine(exports[family]), Translator(exports[family])
    sources = random_sources(12, seed=17)
    free = DecodingOptions(beam_size=4, min_length=10, max_length=14, max_length_ratio=0)
    assert any(repeats(h.tokens, 2) for hyps in engine.translate_ids(sources, free) for h in hyps)
    for beam, n in ((1, 1), (1, 2), (4, 2), (4, 3), (6, 1)):
        opts = replace(free, beam_size=beam, n_best=min(beam, 2), no_repeat_ngram_size=n)
        got = engine.translate_ids(sources, opts)
        assert_same(got, reference.decode_ids(sources, opts))
        assert all(hyps for hyps in got) and not any(repeats(h.tokens, n) for hyps in got for h in hyps)
    # An output may use 20 tokens (<unk> and ids 4-22 of 23): 40 distinct ones before <eos>
    # is allowed are impossible, so no sentence has a result, in either decoder.
    for beam in (1, 3):
        stuck = DecodingOptions(beam_size=beam, min_length=40, max_length=45, max_length_ratio=0, no_repeat_ngram_size=1)
        assert engine.translate_ids(sources, stuck) == [[]] * len(sources) == reference.decode_ids(sources, stuck)


@pytest.mark.parametrize("family", TRANSFORMERS)
def test_transformer_parity_in_a_batch_of_64(exports, family):
    engine, reference = Engine(exports[family]), Translator(exports[family])
    sources = random_sources(64, seed=13)
    for beam in (1, 5):
        opts = DecodingOptions(beam_size=beam, max_length_ratio=1.5, max_length_extra=3)
        assert_same(engine.translate_ids(sources, opts), reference.decode_ids(sources, opts))


def test_transformer_positions_are_bounded_as_in_python(tmp_path):
    folder = random_export(tmp_path / "short", "transformer-pre", max_positions=8)
    engine, reference = Engine(folder), Translator(folder)
    with pytest.raises(ValueError, match="sentence 1 has 8 tokens; this .* reads at most 7"):
        engine.translate_ids([[5] * 8], DecodingOptions())
    # An output that may grow past the table fails as the Python model does, and the engine
    # keeps working.
    opts = DecodingOptions(beam_size=2, max_length=20, max_length_ratio=0, min_length=9)
    with pytest.raises(ValueError, match="exceeds ModelConfig.max_positions=8"):
        engine.translate_ids([[5, 6]], opts)
    with pytest.raises(ValueError, match="exceeds ModelConfig.max_positions=8"):
        reference.decode_ids([[5, 6]], opts)
    opts = DecodingOptions(beam_size=2, max_length=5, max_length_ratio=0)
    assert_same(engine.translate_ids([[5, 6]], opts), reference.decode_ids([[5, 6]], opts))


BAD_OPTIONS = [dict(beam_size=0), dict(beam_size=257), dict(n_best=0), dict(beam_size=2, n_best=3),
               dict(length_penalty="wu"), dict(length_penalty="it's"), dict(min_length=-1),
               dict(min_length_ratio=-0.5), dict(max_length_ratio=-100000.0), dict(max_length_extra=-2),
               dict(alpha=-1e-05), dict(alpha=float("nan")), dict(max_length_ratio=float("inf")),
               dict(max_length=0), dict(no_repeat_ngram_size=-3)]


@pytest.mark.parametrize("bad", BAD_OPTIONS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_engine_validates_options_with_the_python_messages(bad):
    from seq2seq import _C
    from seq2seq.config import validate_decoding_options

    opts = DecodingOptions(**bad)
    with pytest.raises(ValueError) as python:
        validate_decoding_options(opts)
    native = _C.DecodeOptions()
    for name, value in vars(opts).items():
        setattr(native, name, value)
    with pytest.raises(ValueError) as cpp:
        _C.validate_options(native)
    assert str(cpp.value) == str(python.value)


def test_engine_defaults_are_the_python_defaults():
    from dataclasses import fields

    from seq2seq import _C

    native = _C.DecodeOptions()
    for f in fields(DecodingOptions):
        assert getattr(native, f.name) == f.default, f.name


def test_text_translation_and_empty_lines(exports):
    engine, reference = Engine(exports["bahdanau"]), Translator(exports["bahdanau"])
    lines = ["w1 w2 w3", "", "w5 unknownword w9"]
    a, b = engine.translate(lines, DecodingOptions(beam_size=3)), reference.translate(lines, DecodingOptions(beam_size=3))
    assert [x[0].text for x in a] == [x[0].text for x in b]
    assert a[1][0].text == "" and a[1][0].tokens == []


def test_many_threads_share_one_engine(exports):
    engine = Engine(exports["bahdanau-gru-bi"], threads=1)
    sources = random_sources(16, seed=5)
    opts = DecodingOptions(beam_size=4)
    expected = [[h.tokens for h in n] for n in engine.translate_ids(sources, opts)]
    results, errors = {}, []

    def work(i):
        try:
            results[i] = [[h.tokens for h in n] for n in engine.translate_ids(sources[i:] + sources[:i], opts)]
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, got in results.items():
        assert got == expected[i:] + expected[:i]


# ---------------------------------------------------------------------------------------
# Bad input: a clear exception, and the engine keeps working


def test_bad_inputs_are_named_and_the_engine_survives(exports):
    engine = Engine(exports["bahdanau"])
    good = engine.translate_ids([[5, 6, 7]], DecodingOptions(beam_size=2))
    cases = [
        ([[5, SMALL["src_vocab"]]], DecodingOptions(), "token id 23"),
        ([[5, -1]], DecodingOptions(), "token id -1"),
        ([[5, EOS]], DecodingOptions(), "token id 3"),
        ([[]], DecodingOptions(), "sentence 1 is empty"),
        ([[5] * 2000], DecodingOptions(), "at most 1024"),
        ([[5, 6]], DecodingOptions(beam_size=0), "beam_size"),
        ([[5, 6]], DecodingOptions(beam_size=100_000), "beam_size"),
        ([[5, 6]], DecodingOptions(max_length=0), "max_length"),
        ([[5, 6]], DecodingOptions(n_best=3, beam_size=2), "n_best"),
        ([torch.tensor([5.0, 6.0])], DecodingOptions(), "integer dtype"),
        ([torch.tensor([[5, 6]])], DecodingOptions(), "1-d"),
        ([["w5"]], DecodingOptions(), "list of integer token ids"),
    ]
    for sources, opts, message in cases:
        with pytest.raises(ValueError, match=message):
            engine.translate_ids(sources, opts)
    non_contiguous = torch.tensor([5, 0, 6, 0, 7])[::2]
    assert [h.tokens for h in engine.translate_ids([non_contiguous], DecodingOptions(beam_size=2))[0]] == \
        [h.tokens for h in good[0]]
    assert [h.tokens for h in engine.translate_ids([[5, 6, 7]], DecodingOptions(beam_size=2))[0]] == \
        [h.tokens for h in good[0]]


def test_too_long_text_is_an_error_or_truncated_on_request(exports):
    engine = Engine(exports["bahdanau"], max_source_tokens=4)
    with pytest.raises(ValueError, match="sentence 1 has 6 tokens; this model reads at most 4"):
        engine.translate(["w1 w2 w3 w4 w5 w6"])
    cut = engine.translate(["w1 w2 w3 w4 w5 w6"], truncate=True)
    assert cut[0][0].tokens == engine.translate(["w1 w2 w3 w4"])[0][0].tokens


def test_engine_refuses_what_it_cannot_run(exports, tmp_path):
    with pytest.raises(ValueError, match="compute_type 'float16'"):
        Engine(exports["lstm"], compute_type="float16")
    with pytest.raises(ValueError, match="threads"):
        Engine(exports["lstm"], threads=-1)


TRAINED_FAMILIES = {
    "bahdanau": ["--family=attention", "--attention=bahdanau", "--cell=gru", "--bidirectional=true", "--emb_dim=64",
                 "--hidden=128", "--attention_dim=64", "--layers=1", "--lr=3e-3"],
    "bahdanau-copy": ["--family=attention", "--attention=bahdanau", "--cell=gru", "--bidirectional=true",
                      "--emb_dim=64", "--hidden=128", "--attention_dim=64", "--layers=1", "--lr=3e-3", "--copy=true"],
    "transformer": ["--family=transformer", "--d_model=64", "--heads=4", "--ff_dim=128", "--enc_layers=2",
                    "--dec_layers=2", "--norm=pre", "--tie_embeddings=true", "--lr=2e-3"],
}


@pytest.mark.parametrize("family", list(TRAINED_FAMILIES))
def test_parity_on_a_model_trained_on_multi30k(shared_data, tmp_path, family):
    """A small model trained briefly on Multi30k de->en: real sentences, a learnt (peaked,
    non-random) distribution, subword vocabulary."""
    from seq2seq.data import load_dataset
    from seq2seq.export import export
    from seq2seq.train import load_recipe, train

    args = ["--corpus=multi30k", "--src=de", "--tgt=en", f"--data_dir={shared_data}", "--vocab_size=1000",
            "--max_tokens=3000", *TRAINED_FAMILIES[family], "--dropout=0",
            "--max_steps=60", "--samples=0", "--val_bleu=false", "--tensorboard=false", f"--out_dir={tmp_path}"]
    data_cfg, model_cfg, train_cfg = load_recipe(None, args)
    train(data_cfg, model_cfg, train_cfg, log=lambda *_: None, progress=False)
    folder = export(tmp_path / "last.pt", tmp_path / "export")
    engine, reference = Engine(folder), Translator(folder)
    aten = Engine(folder, ops="reference")  # the ops as a device without kernels runs them
    pairs = load_dataset(engine.data_cfg, ["test_2016_flickr"]).splits["test_2016_flickr"][:150]
    sources = [s for s, _ in pairs]
    for beam in (1, 5, 10):
        opts = DecodingOptions(beam_size=beam)
        a, b, c = engine.translate(sources, opts), reference.translate(sources, opts), aten.translate(sources, opts)
        assert [x[0].tokens for x in a] == [x[0].tokens for x in b] == [x[0].tokens for x in c]
        assert max(abs(x[0].score - y[0].score) for x, y in zip(a, b)) < 1e-4
        assert max(abs(x[0].score - y[0].score) for x, y in zip(a, c)) < 1e-4
    # int8 on a learnt model: most translations unchanged, and no worse on the whole.
    from seq2seq.evaluate import score
    refs = [t for _, t in pairs]
    opts = DecodingOptions(beam_size=5)
    f32 = [x[0].text for x in engine.translate(sources, opts)]
    int8 = [x[0].text for x in Engine(folder, compute_type="int8").translate(sources, opts)]
    assert sum(a == b for a, b in zip(f32, int8)) >= int8_agreement() * len(sources)
    assert abs(score(int8, refs, sources)["bleu"] - score(f32, refs, sources)["bleu"]) < 1.0


# ---------------------------------------------------------------------------------------
# compute_type int8 and bfloat16


def rounded_weights_reference(folder, compute_type):
    """The Python reference on the export with every matrix the engine converts replaced by
    its round trip through the compute type (int8: per output channel, scale max|w| / 127):
    what is left between the two is the engine's rounding of the activations."""
    reference = Translator(folder)
    model = reference.model
    if getattr(model.cfg, "tie_embeddings", False):  # the engine converts the output layer, not the embedding
        model.out.weight = torch.nn.Parameter(model.out.weight.detach().clone())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not converted_matrix(model.cfg.family, name, p):
                continue
            if compute_type == "int8":
                scale = p.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
                p.copy_(torch.round(p / scale).clamp(-127, 127) * scale)
            else:
                p.copy_(p.bfloat16().float())
    return reference


@pytest.mark.parametrize("compute_type", ["int8", "bfloat16"])
@pytest.mark.parametrize("family", ENGINE_FAMILIES)
def test_lower_precision_follows_the_reference_with_rounded_weights(exports, family, compute_type):
    # Short outputs: on a random model a small difference early on sends a long output down
    # another path, which says nothing about the size of the difference.
    engine = Engine(exports[family], compute_type=compute_type)
    reference = rounded_weights_reference(exports[family], compute_type)
    sources = random_sources(40, seed=5)
    for beam in (1, 5):
        opts = DecodingOptions(beam_size=beam, max_length=3)
        ours, theirs = engine.translate_ids(sources, opts), reference.decode_ids(sources, opts)
        same = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a[0].tokens == b[0].tokens]
        # A wrong conversion or gate agrees on next to nothing; rounding leaves most identical.
        least = 32 if compute_type == "bfloat16" else int8_agreement() * 40
        assert len(same) >= least, f"beam {beam}: {len(same)} of {len(sources)} identical"
        for i in same:
            tol = rounding_tolerance(compute_type, theirs[i][0].log_prob)
            assert ours[i][0].log_prob == pytest.approx(theirs[i][0].log_prob, abs=tol), f"beam {beam}, sentence {i}"


def activation_step(compute_type: str) -> float:
    """The relative rounding step of the activations the engine multiplies by: bfloat16 keeps
    8 significant bits (2^-8); int8 maps each activation's range onto 2^(bits-1) - 1 levels
    a side, with the bits this CPU's int8 path uses (8, or 7 without VNNI)."""
    if compute_type == "bfloat16":
        return 2.0 ** -8
    return 1.0 / (2 ** (extension().int8_activation_bits() - 1) - 1)


def rounding_tolerance(compute_type: str, log_prob: float) -> float:
    """How far a hypothesis' log-probability may move when every product's activations are
    rounded to `activation_step`: each step's logits move in proportion to their size, so
    the sum moves in proportion to |log_prob| (the 1 covers a log-probability near 0). The
    largest error measured over the families of this test, on an AVX2 EPYC, was 1.5 steps x
    (|log_prob| + 1) with 7-bit int8 and 1.7 with bfloat16 (benchmarks/lower_precision_error.py
    measures it on any CPU); the factor 4 leaves more than
    twice that for other CPUs' summation orders. A wrong conversion moves scores by whole units."""
    return 4 * activation_step(compute_type) * (abs(log_prob) + 1)


def test_int8_engine_is_batch_invariant_and_reports_its_type(exports):
    engine = Engine(exports["bahdanau-gru-bi"], compute_type="int8")
    assert engine.compute_type == "int8" and engine._engine.compute_type == "int8"
    sources = random_sources(16, seed=8)
    opts = DecodingOptions(beam_size=4, max_length_ratio=1.0, max_length_extra=4)
    together = engine.translate_ids(sources, opts)
    alone = [engine.translate_ids([s], opts)[0] for s in sources]
    # Activations are quantized per call with the batch's range, so scores may move
    # slightly with the company a sentence keeps; the tokens of a confident model do not.
    agree = sum(a[0].tokens == b[0].tokens for a, b in zip(together, alone))
    assert agree >= 14


@pytest.mark.parametrize("family", ["bahdanau", "transformer-pre"])
def test_abandoned_sentences_leave_the_search_and_the_rest_are_unchanged(exports, family):
    # The flags the servers' batchers set when a caller cancels or its deadline passes.
    engine = Engine(exports[family])
    sources = random_sources(6, seed=11)
    opts = DecodingOptions(beam_size=3)
    abandoned = torch.zeros(len(sources), dtype=torch.bool)
    abandoned[[1, 4]] = True
    got = engine.decode_ids(sources, opts, abandoned)
    assert got[1] == [] and got[4] == []
    kept = [0, 2, 3, 5]
    assert_same([got[i] for i in kept], engine.decode_ids([sources[i] for i in kept], opts))
    # Set by another thread while the search runs: the sentence stops there.
    flags = torch.zeros(64, dtype=torch.bool)
    long = DecodingOptions(beam_size=4, min_length=400, max_length=400, max_length_ratio=0.0)  # seconds
    timer = threading.Timer(0.05, lambda: flags.fill_(True))
    timer.start()
    assert engine.decode_ids([[5, 6, 7] * 4] * 64, long, flags) == [[]] * 64
    timer.join()
    with pytest.raises(ValueError, match="one flag per sentence"):
        engine.decode_ids(sources, opts, torch.zeros(2, dtype=torch.bool))


def test_a_call_takes_one_thread_fewer_for_each_core_others_keep_busy():
    from seq2seq import _C

    # configured, cores, cores others keep busy -> threads; a core counts once 30% of it is taken.
    for args, threads in [((2, 2, 0.0), 2), ((2, 2, 0.25), 2), ((2, 2, 0.35), 1), ((2, 2, 1.0), 1), ((2, 2, 2.0), 1),
                          ((4, 8, 3.0), 4), ((8, 8, 3.0), 5), ((1, 4, 0.0), 1)]:
        assert _C.threads_for_load(*args) == threads, args
    cores, others = _C.cpu_load()
    assert cores == len(os.sched_getaffinity(0)) and 0.0 <= others <= cores + 0.5


def test_each_product_names_its_kernel_by_the_rule_it_runs():
    from seq2seq import _C

    # The few rows of a decoding step take the engine's panels on every CPU, a batch a library's.
    assert _C.dense_kernels("float32", 512, 256, [1, 5, 16]) == ["engine panels"] * 3
    assert "engine panels" not in _C.dense_kernels("float32", 512, 256, [17, 160])
    assert _C.dense_kernels("int8", 512, 256, [160]) == ["FBGEMM"]
    with pytest.raises(ValueError, match="compute_type must be float32, int8 or bfloat16"):
        _C.dense_kernels("float16", 8, 8, [1])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores: one kept busy, one to decode on")
def test_a_busy_core_is_seen_and_a_call_leaves_the_thread_count_as_it_was(tmp_path):
    import time

    from seq2seq import _C
    from seq2seq.bench import BusyCores

    engine = Engine(random_export(tmp_path, "transformer-pre"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with BusyCores(1):
            time.sleep(0.5)  # the spinning process starts
            _C.cpu_load()
            time.sleep(0.5)  # one window of the sampler
            assert _C.cpu_load()[1] >= 0.5
            engine.decode_ids([[5, 6, 7]], DecodingOptions(beam_size=2, max_length=4))
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
