"""The CTranslate2 conversion against the Python reference decoder, on small trained
Transformers (a trained model's distributions are peaked, so two faithful decoders agree
token for token instead of parting on near-ties)."""

import json
import random
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from seq2seq.config import DataConfig, DecodingOptions, ModelConfig
from seq2seq.data import PairTokenizer, collate, make_example
from seq2seq.data.tokenizers import BOS, PAD, SPECIALS, WORD_START, WordTokenizer
from seq2seq.decoding import decode
from seq2seq.export import ExportError, export, load_export
from seq2seq.models import build_model
from tests.exports import int8_agreement, random_export
from tests.test_models import FAMILIES, SMALL

ctranslate2 = pytest.importorskip("ctranslate2")

from seq2seq.convert import CTranslate2Decoder, convert_to_ctranslate2, vocabulary_tokens  # noqa: E402

V = SMALL["src_vocab"]
VARIANTS = {  # pre: sinusoidal, untied; post: learned positions, tied output layer
    "pre": FAMILIES["transformer-pre"],
    "post-learned-tied": FAMILIES["transformer-post"],
}


def reversal_pairs(n: int, seed: int, max_len: int = 10) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    sources = [[rng.randrange(4, V) for _ in range(rng.randint(2, max_len))] for _ in range(n)]
    return [(s, s[::-1]) for s in sources]


def train_reversal(cfg: ModelConfig, steps: int = 250, seed: int = 0) -> torch.nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only wait on each other (and on a busy machine)
    try:
        return train_steps(cfg, steps, seed)
    finally:
        torch.set_num_threads(threads)


def train_steps(cfg: ModelConfig, steps: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pairs = reversal_pairs(steps * 32, seed)
    for step in range(steps):
        batch = collate([make_example(s, t) for s, t in pairs[step * 32:(step + 1) * 32]], list(range(32)))
        log_probs = model(batch.src, batch.src_lengths, batch.tgt[:, :-1])
        loss = F.nll_loss(log_probs.transpose(1, 2), batch.tgt[:, 1:], ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def trained_export(folder, variant: str):
    cfg = ModelConfig(dropout=0.0, **{**SMALL, **VARIANTS[variant]})
    model = train_reversal(cfg)
    words = WordTokenizer(list(SPECIALS) + [f"{WORD_START}w{i}" for i in range(V - len(SPECIALS))])
    tokenizer = PairTokenizer(words, words)
    ckpt = {"model": asdict(cfg), "model_state": model.state_dict(), "tokenizer": tokenizer.state(),
            "data": asdict(DataConfig(tokenizer="word"))}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "model.pt")
    return export(folder / "model.pt", folder / "export")


@pytest.fixture(scope="module", params=list(VARIANTS))
def converted(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    export_dir = trained_export(folder, request.param)
    return export_dir, convert_to_ctranslate2(export_dir, folder / "ct2")


def reference(export_dir, sources, opts):
    batch = collate([make_example(s, []) for s in sources], list(range(len(sources))))
    return decode(load_export(export_dir).model(), batch.src, batch.src_lengths, opts)


SOURCES = [s for s, _ in reversal_pairs(50, seed=99, max_len=12)]
SEARCHES = {
    "greedy": DecodingOptions(beam_size=1, length_penalty="none"),
    "beam5": DecodingOptions(beam_size=5, length_penalty="none"),
    "beam5-average": DecodingOptions(beam_size=5, length_penalty="average"),
    "greedy-gnmt": DecodingOptions(beam_size=1, length_penalty="gnmt"),
    # The limits bind: hypotheses cut at the maximum, <eos> held back below the minimum.
    "greedy-limits": DecodingOptions(beam_size=1, length_penalty="none", min_length=3, max_length=5),
}


@pytest.mark.parametrize("search", SEARCHES)
def test_same_tokens_and_scores_as_the_reference(converted, search):
    export_dir, ct2_dir = converted
    opts = SEARCHES[search]
    want = reference(export_dir, SOURCES, opts)
    got = CTranslate2Decoder(ct2_dir).translate_ids(SOURCES, opts)
    assert [h[0].tokens for h in got] == [h[0].tokens for h in want]
    for g, w in zip(got, want):
        assert g[0].log_prob == pytest.approx(w[0].log_prob, abs=1e-3)
        assert g[0].score == pytest.approx(w[0].score, abs=1e-3)


def test_without_exact_scores_log_probs_are_renormalized_over_the_allowed_tokens(converted):
    """Why the decoder scores its hypotheses again by default: CTranslate2 sums
    log-softmaxes taken after <pad> and <bos> are removed; the reference's keep them."""
    export_dir, ct2_dir = converted
    sources = SOURCES[:10]
    got = CTranslate2Decoder(ct2_dir, exact_scores=False).translate_ids(sources, SEARCHES["greedy"])
    model = load_export(export_dir).model()
    for source, hyps in zip(sources, got):
        batch = collate([make_example(source, hyps[0].tokens)], [0])
        with torch.no_grad():
            log_probs = model(batch.src, batch.src_lengths, batch.tgt[:, :-1])[0]
        chosen = log_probs.gather(1, batch.tgt[0, 1:, None]).squeeze(1)
        removed = log_probs[:, [PAD, BOS]].exp().sum(1)
        assert hyps[0].log_prob == pytest.approx((chosen - torch.log1p(-removed)).sum().item(), abs=1e-4)
        assert hyps[0].log_prob > chosen.sum().item()  # the reference's


def test_n_best_lists_are_ranked_like_the_reference(converted):
    export_dir, ct2_dir = converted
    opts = DecodingOptions(beam_size=5, n_best=3, length_penalty="average")
    want = reference(export_dir, SOURCES, opts)
    got = CTranslate2Decoder(ct2_dir).translate_ids(SOURCES, opts)
    assert [[h.tokens for h in hyps] for hyps in got] == [[h.tokens for h in hyps] for hyps in want]


def test_refuses_options_it_cannot_reproduce(converted):
    decoder = CTranslate2Decoder(converted[1])
    with pytest.raises(ValueError, match="gnmt"):
        decoder.translate_ids(SOURCES[:2], DecodingOptions(beam_size=5, length_penalty="gnmt"))
    with pytest.raises(ValueError, match="min_length"):
        decoder.translate_ids(SOURCES[:2], DecodingOptions(beam_size=5, length_penalty="none", min_length=2))
    with pytest.raises(ValueError, match="early_stop"):
        decoder.translate_ids(SOURCES[:2], DecodingOptions(beam_size=5, length_penalty="none", early_stop=False))
    with pytest.raises(ValueError, match="no_repeat_ngram_size is not passed to CTranslate2"):
        decoder.translate_ids(SOURCES[:2], DecodingOptions(beam_size=1, no_repeat_ngram_size=2))
    with pytest.raises(ValueError, match="source 1"):
        decoder.translate_ids([[5, 6], [5, PAD]], DecodingOptions(beam_size=1))
    with pytest.raises(ValueError, match="max_positions"):
        decoder.translate_ids([[5] * 70], DecodingOptions(beam_size=1))


def test_vocabulary_strings_are_unique_and_keep_every_id():
    words = WordTokenizer(list(SPECIALS) + ["▁a", "▁a", "", "<seq2seq:6>", "<seq2seq:5>"])
    tokens = vocabulary_tokens(words, words.vocab_size)
    assert tokens == list(SPECIALS) + ["▁a", "<seq2seq:5>", "<seq2seq:6>", "<seq2seq:7>", "<seq2seq:8>"]


def test_refuses_a_non_transformer_export(tmp_path):
    export_dir = random_export(tmp_path, "lstm")
    with pytest.raises(ExportError, match="'rnn'"):
        convert_to_ctranslate2(export_dir, tmp_path / "ct2")
    assert not (tmp_path / "ct2").exists()
    with pytest.raises(ExportError, match="copy mechanism"):
        convert_to_ctranslate2(random_export(tmp_path / "copy", "transformer-copy"), tmp_path / "ct2")
    assert not (tmp_path / "ct2").exists()


def test_cli_converts_with_int8(converted, tmp_path):
    from seq2seq.cli import main

    export_dir, _ = converted
    out = tmp_path / "ct2-int8"
    assert main(["convert", "--to", "ctranslate2", str(export_dir), str(out), "--quantization", "int8"]) == 0
    assert (out / "model.bin").is_file()
    opts = DecodingOptions(beam_size=1, length_penalty="none")
    got = CTranslate2Decoder(out).translate_ids(SOURCES, opts)
    want = reference(export_dir, SOURCES, opts)
    # int8 weights: close, not exact. A reversed sequence that is off in one token is no longer
    # equal, so the tokens are compared position by position; a wrong conversion agrees on
    # next to nothing.
    same = sum(a == b for g, w in zip(got, want) for a, b in zip(g[0].tokens, w[0].tokens))
    total = sum(max(len(g[0].tokens), len(w[0].tokens)) for g, w in zip(got, want))
    assert same >= int8_agreement() * total, f"{same} of {total} tokens in place"



def test_cli_reports_a_non_transformer_export(tmp_path, capsys):
    from seq2seq.cli import main

    export_dir = random_export(tmp_path, "bahdanau")
    assert main(["convert", "--to", "ctranslate2", str(export_dir), str(tmp_path / "ct2")]) == 2
    assert "'attention'" in capsys.readouterr().err


def test_bench_against_ctranslate2_prints_every_backend_and_the_ratios(converted, tmp_path, capsys):
    from seq2seq.cli import main

    export_dir, _ = converted
    text = tmp_path / "in.txt"
    text.write_text("\n".join(" ".join(f"w{i - 4}" for i in s) for s in SOURCES[:6]) + "\n")
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(export_dir), "--input", str(text), "--cases", "greedy:1,beam2:3",
                 "--compute-type", "float32,int8,bfloat16", "--threads", "2", "--against", "ctranslate2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "length_penalty none for every backend" in printed
    report = json.loads(out.read_text())
    want = {"cpp float32", "cpp int8", "cpp bfloat16", "python", "ct2 float32 1t", "ct2 float32 2t",
            "ct2 int8 1t", "ct2 int8 2t"}
    for case in ("greedy:1", "beam2:3"):
        row = report["results"][case]
        assert set(row) == want
        # The faithful conversion in float32 decodes as the Python reference does.
        assert row["ct2 float32 1t"]["identical"] == row["cpp float32"]["identical"] == 6
        line = next(x for x in printed.splitlines() if x.startswith(f"| {case} | cpp float32 |"))
        ratio = row["cpp float32"]["sentences_per_s"] / max(row["ct2 float32 1t"]["sentences_per_s"],
                                                            row["ct2 float32 2t"]["sentences_per_s"])
        assert f"| {ratio:.2f}x |" in line


def test_bench_against_ctranslate2_needs_an_export(converted, capsys):
    from seq2seq.cli import main

    checkpoint = converted[0].parent / "model.pt"
    assert main(["bench", "--model", str(checkpoint), "--backend", "python", "--against", "ctranslate2"]) == 2
    assert "--against ctranslate2 needs an export directory" in capsys.readouterr().err
