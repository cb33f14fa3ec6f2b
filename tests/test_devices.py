"""What runs the engine off the CPU, checked on the CPU: the ops' ATen implementations
(csrc/ops/reference.cpp, what a device without kernels of its own runs) against the CPU
kernels, op by op on awkward sizes and through the whole engine; the device argument."""

import pytest
import torch

from seq2seq.config import DecodingOptions
from seq2seq.engine import Engine, extension
from tests.test_engine import ENGINE_FAMILIES, TRANSFORMER_VARIANTS, exports, random_sources  # noqa: F401

pytest.importorskip("seq2seq._C", reason="the C++ engine is not built")
_C = extension()
ops = torch.ops.seq2seq
NEG_INF = float("-inf")


def close(ours, theirs, atol=1e-5):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("additive", [False, True])
@pytest.mark.parametrize("rows,sources,length,width", [(1, 1, 1, 1), (13, 5, 33, 17), (130, 7, 9, 64)])
def test_attention(additive, rows, sources, length, width):
    g = torch.Generator().manual_seed(rows)
    query, keys = torch.randn(rows, width, generator=g), torch.randn(sources, length, width, generator=g) * 2
    memory = torch.randn(sources, length, width + 3, generator=g)
    lengths = torch.randint(1, length + 1, (sources,), generator=g)
    lengths[0] = 1  # a source of one position
    sentence = torch.randint(0, sources, (rows,), generator=g)
    memory[torch.arange(length) >= lengths.unsqueeze(1)] = float("nan")  # never read
    v = torch.randn(width, generator=g) if additive else None
    args = (query, keys, memory, lengths, sentence, v)
    ours, theirs = ops.attention(*args), _C.reference.attention(*args)
    close(ours, theirs)
    assert (theirs[1] == 0).sum() == (ours[1] == 0).sum()  # zero past each length in both


@pytest.mark.parametrize("heads,self_attention", [(1, True), (4, True), (3, False), (8, False)])
def test_multi_head_attention(heads, self_attention):
    g = torch.Generator().manual_seed(heads)
    rows, blocks, length, width = 11, (11 if self_attention else 4), 19, heads * 6
    query = torch.randn(rows, width, generator=g)
    keys, values = torch.randn(blocks, length, width, generator=g), torch.randn(blocks, length, width, generator=g)
    lengths = torch.randint(1, length + 1, (blocks,), generator=g)
    lengths[-1] = 1
    sentence = None if self_attention else torch.randint(0, blocks, (rows,), generator=g)
    # Past each length a cache holds whatever memory held, NaN included: never read.
    after = torch.arange(length) >= lengths.unsqueeze(1)
    keys[after], values[after] = float("nan"), float("inf")
    args = (query, keys, values, lengths, sentence, heads)
    close(ops.multi_head_attention(*args), _C.reference.multi_head_attention(*args))


@pytest.mark.parametrize("shape", [(1, 3), (7, 33), (2, 3, 512)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_layer_norm(shape, with_residual):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g) * 5 + 20
    residual = torch.randn(*shape, generator=g) if with_residual else None
    weight, bias = torch.randn(shape[-1], generator=g), torch.randn(shape[-1], generator=g)
    ours, theirs = ops.add_layer_norm(x, residual, weight, bias, 1e-5), _C.reference.add_layer_norm(x, residual, weight,
                                                                                                     bias, 1e-5)
    assert torch.equal(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1], atol=3e-5, rtol=1e-5)


def candidate_inputs(blocks, group, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(blocks * group, vocab, generator=g) * 3
    if vocab > 11:
        logits[:, 10] = logits[:, 11]  # ties between tokens ...
    if group > 1:
        logits[1] = logits[0]  # ... and between the rows of a beam
    row_scores = -torch.rand(blocks * group, generator=g) * 5
    if group > 1:
        row_scores[1] = row_scores[0]
    rule = torch.zeros(blocks * group, dtype=torch.int8)
    rule[2::5] = 1  # <eos> forbidden
    rule[3::7] = 2  # only <eos>
    return logits, row_scores, rule


@pytest.mark.parametrize("blocks,group,vocab,count", [
    (1, 1, 1, 1), (3, 5, 32003, 1), (3, 5, 32003, 10), (2, 4, 37, 4 * 37), (2, 4, 37, 4 * 37 + 5), (5, 3, 515, 6)])
def test_beam_candidates(blocks, group, vocab, count):
    logits, row_scores, rule = candidate_inputs(blocks, group, vocab, seed=vocab)
    if vocab > 1:
        rule[0] = 0
    else:
        rule.zero_()
    banned = [t for t in (5, 17, vocab - 1) if 3 < t < vocab]
    eos = min(3, vocab - 1)
    args = (logits, row_scores, rule, banned, eos, group, count)
    (s1, i1), (s2, i2) = ops.beam_candidates(*args), _C.reference.beam_candidates(*args)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-6)


def test_beam_candidates_of_finished_rows_are_missing():
    logits, row_scores, rule = candidate_inputs(2, 4, 50, seed=1)
    row_scores[:4] = NEG_INF  # every row of the first block finished
    for impl in (ops.beam_candidates, _C.reference.beam_candidates):
        scores, index = impl(logits, row_scores, rule, [], 3, 4, 8)
        assert (scores[0] == NEG_INF).all() and (index[0] == -1).all()
        assert (index[1] >= 0).all()


def test_checks_are_the_same_for_both():
    logits, row_scores, rule = candidate_inputs(1, 2, 9, seed=2)
    for impl in (ops.beam_candidates, _C.reference.beam_candidates):
        with pytest.raises((ValueError, RuntimeError), match="rows must be a multiple of group"):
            impl(logits, row_scores, rule, [], 3, 3, 2)
        with pytest.raises((ValueError, RuntimeError), match="banned token ids must be within the vocabulary"):
            impl(logits, row_scores, rule, [9], 3, 2, 2)
        with pytest.raises((ValueError, RuntimeError), match="row_scores must be float32"):
            impl(logits, row_scores.double(), rule, [], 3, 2, 2)


@pytest.mark.parametrize("family", ENGINE_FAMILIES)
def test_engine_gives_the_same_tokens_with_the_reference_ops(exports, family):  # noqa: F811
    kernels, reference = Engine(exports[family]), Engine(exports[family], ops="reference")
    assert reference.native.ops == "reference" and kernels.native.ops == "device"
    sources = random_sources(24, seed=3)
    # Outputs as long as test_engine's parity tests allow: on a random model a long output
    # meets near-ties where any two summation orders may part ways.
    bounds = dict(max_length_ratio=1.5, max_length_extra=3)
    for opts in (DecodingOptions(beam_size=1, **bounds), DecodingOptions(beam_size=5, n_best=2, **bounds)):
        ours, theirs = kernels.translate_ids(sources, opts), reference.translate_ids(sources, opts)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert [h.tokens for h in a] == [h.tokens for h in b], f"sentence {i}, beam {opts.beam_size}"
            for x, y in zip(a, b):
                assert x.score == pytest.approx(y.score, abs=1e-4)


def test_engine_refuses_unknown_ops(exports):  # noqa: F811
    with pytest.raises(Exception, match="ops must be device .* or reference .*, not fused"):
        Engine(exports["transformer-pre"], ops="fused")


def test_engine_names_a_bad_device(exports):  # noqa: F811
    with pytest.raises(Exception, match="device must be cpu, cuda or cuda:N, not tpu"):
        Engine(exports["transformer-pre"], device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_engine_on_cuda_without_a_gpu_says_so(exports):  # noqa: F811
    with pytest.raises(Exception, match="device cuda: this torch build has no CUDA or sees no GPU; use device cpu"):
        Engine(exports["transformer-pre"], device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
@pytest.mark.parametrize("family", ["bahdanau", "transformer-pre"])
def test_engine_on_cuda_gives_the_cpu_tokens(exports, family):  # noqa: F811
    cpu, gpu = Engine(exports[family]), Engine(exports[family], device="cuda")
    assert gpu.device.type == "cuda"
    sources = random_sources(24, seed=4)
    bounds = dict(max_length_ratio=1.5, max_length_extra=3)
    for opts in (DecodingOptions(beam_size=1, **bounds), DecodingOptions(beam_size=5, **bounds)):
        ours, theirs = gpu.translate_ids(sources, opts), cpu.translate_ids(sources, opts)
        assert [h[0].tokens for h in ours] == [h[0].tokens for h in theirs]


needs_cuda_kernels = pytest.mark.skipif(not (torch.cuda.is_available() and _C.CUDA_KERNELS),
                                        reason="no GPU here, or this build has no CUDA kernels (make setup TORCH=cuda)")


@needs_cuda_kernels
def test_cuda_kernels_match_the_cpu_kernels():
    def on_gpu(args):
        return tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)

    def same(cpu, gpu, atol=1e-5):
        for a, b in zip(cpu, gpu):
            if a.dtype == torch.long:
                assert torch.equal(a, b.cpu())
            else:
                torch.testing.assert_close(b.cpu(), a, atol=atol, rtol=1e-5, equal_nan=True)

    g = torch.Generator().manual_seed(0)
    for additive in (False, True):
        query, keys, memory = torch.randn(13, 17, generator=g), torch.randn(5, 33, 17, generator=g), torch.randn(5, 33, 20)
        lengths, sentence = torch.tensor([1, 33, 7, 20, 2]), torch.randint(0, 5, (13,), generator=g)
        args = (query, keys, memory, lengths, sentence, torch.randn(17, generator=g) if additive else None)
        same(ops.attention(*args), ops.attention(*on_gpu(args)))
    for sentence in (None, torch.randint(0, 4, (11,), generator=g)):
        blocks = 11 if sentence is None else 4
        keys, values = torch.randn(blocks, 19, 24, generator=g), torch.randn(blocks, 19, 24, generator=g)
        args = (torch.randn(11, 24, generator=g), keys, values, torch.randint(1, 20, (blocks,), generator=g), sentence, 4)
        same(ops.multi_head_attention(*args), ops.multi_head_attention(*on_gpu(args)))
    x, r, w, b = torch.randn(7, 515, generator=g) * 5 + 20, torch.randn(7, 515), torch.randn(515), torch.randn(515)
    same(ops.add_layer_norm(x, r, w, b, 1e-5), ops.add_layer_norm(*on_gpu((x, r, w, b)), 1e-5), atol=3e-5)
    for blocks, group, vocab, count in [(3, 5, 32003, 10), (2, 4, 37, 4 * 37 + 5), (1, 1, 1, 1)]:
        logits, row_scores, rule = candidate_inputs(blocks, group, vocab, seed=vocab)
        rule[0] = 0
        args = (logits, row_scores, rule, [t for t in (5, 17) if t < vocab], min(3, vocab - 1), group, count)
        same(ops.beam_candidates(*args), ops.beam_candidates(*on_gpu(args)))
