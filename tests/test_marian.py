"""`seq2seq import marian` against transformers' MarianMTModel, which nobody here wrote.

A small random Marian model is built and saved by transformers, with SentencePiece models
trained here and a vocab.json laid out as OPUS-MT's (</s> 0, <unk> 1, <pad> last, the pad
starting the decoder); the import must tokenize, decode and score as MarianTokenizer and
generate() do, in the Python reference and in the engine. init_std is raised from Marian's
0.02, at which a random model gives every input the same output and a test could not tell
two models apart; the tests assert that the outputs differ from input to input.
"""

import io
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the Marian tests compare with transformers")
import sentencepiece as spm  # noqa: E402

from seq2seq.config import DecodingOptions  # noqa: E402
from seq2seq.data.tokenizers import EOS  # noqa: E402
from seq2seq.decoding import decode  # noqa: E402
from seq2seq.export import load_export  # noqa: E402
from seq2seq.marian import MarianImportError, import_marian, marian_positions  # noqa: E402
from tests.servers import SERVERS, Running  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRANSLATE_BINARY = ROOT / "build" / "cmake" / "seq2seq-translate"
VOCAB = 300
SYLLABLES = ("ka lo mi ne ru ta si po ve du an or el is ub ba zo ki fu le mo ny ga ri te ox ip ul ed ar "
             "é ü ß").split()


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(150)]
    out = []
    for _ in range(n):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(2, 14)))
        out.append(s[0].upper() + s[1:] + rng.choice(".!?,."))
    return out


def train_spm(lines: list[str], size: int, seed: int) -> bytes:
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    # OPUS-MT's layout: <unk> 0, <s> 1, </s> 2, no pad.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=size,
                                   model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return model.getvalue()


def make_marian(folder: Path, *, activation="swish", init_std=0.3, scale_embedding=True, d_model=64, layers=2,
                num_beams=4, max_length=64, eos_bias=0.0, seed=0) -> Path:
    """A random MarianMTModel with its MarianTokenizer, as save_pretrained writes them."""
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    work = folder / "spm"
    work.mkdir(exist_ok=True)
    (work / "source.spm").write_bytes(train_spm(sentences(600, seed), 120, seed))
    (work / "target.spm").write_bytes(train_spm(sentences(600, seed + 1)[::-1], 120, seed + 1))
    pieces = ["</s>", "<unk>"]
    for side in ("source.spm", "target.spm"):
        sp = spm.SentencePieceProcessor(model_file=str(work / side))
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if piece not in pieces and not sp.is_control(i) and not sp.is_unknown(i):
                pieces.append(piece)
    assert len(pieces) < VOCAB - 1
    pieces += [">>yy<<"] + [f"<extra_{i}>" for i in range(VOCAB - 2 - len(pieces))] + ["<pad>"]
    (work / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}, ensure_ascii=False))
    MarianTokenizer(str(work / "source.spm"), str(work / "target.spm"), str(work / "vocab.json"),
                    source_lang="xx", target_lang="yy").save_pretrained(folder)
    shutil.rmtree(work)
    pad = VOCAB - 1
    config = MarianConfig(vocab_size=VOCAB, decoder_vocab_size=VOCAB, d_model=d_model, encoder_layers=layers,
                          decoder_layers=layers, encoder_attention_heads=4, decoder_attention_heads=4,
                          encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model, max_position_embeddings=256,
                          activation_function=activation, init_std=init_std, scale_embedding=scale_embedding,
                          pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0)
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    with torch.no_grad():  # a random model seldom ends on its own: </s> made likelier ends sentences anywhere
        model.final_logits_bias[0, 0] = eos_bias
    # As OPUS-MT's generation_config.json: the pad is never generated.
    model.generation_config = GenerationConfig(bad_words_ids=[[pad]], decoder_start_token_id=pad, eos_token_id=0,
                                               forced_eos_token_id=0, pad_token_id=pad, max_length=max_length,
                                               num_beams=num_beams)
    model.save_pretrained(folder)
    return folder


class Marian:
    """A saved random Marian model, its import, and both sides' ways to decode."""

    def __init__(self, folder: Path, export: Path):
        from transformers import MarianMTModel, MarianTokenizer

        self.folder, self.export_dir = folder, import_marian(folder, export)
        self.hf = MarianMTModel.from_pretrained(folder).eval()
        self.hf_tokenizer = MarianTokenizer.from_pretrained(folder)
        self.export = load_export(self.export_dir)
        self.model = self.export.model()
        ours = self.export.tokenizer.src.vocab
        theirs = json.loads((folder / "vocab.json").read_text())
        self.to_ours = {i: ours.index(p) for p, i in theirs.items()}  # Marian's pad -> our <pad>, not <bos>

    def source_ids(self, texts):
        return [self.export.tokenizer.src.encode(t) for t in texts]

    def generate(self, texts, **kwargs):
        """generate()'s hypotheses in our ids, without the start token and the final </s>."""
        batch = self.hf_tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = self.hf.generate(**batch, do_sample=False, return_dict_in_generate=True, output_scores=True,
                                   **kwargs)
        rows = [[self.to_ours[i] for i in row[1:]] for row in out.sequences.tolist()]
        return [r[:r.index(EOS)] if EOS in r else r for r in rows], out

    def reference(self, texts, opts):
        ids = self.source_ids(texts)
        src = torch.zeros(len(ids), max(map(len, ids)) + 1, dtype=torch.long)
        for i, seq in enumerate(ids):
            src[i, :len(seq) + 1] = torch.tensor(seq + [EOS])
        return decode(self.model, src, torch.tensor([len(s) + 1 for s in ids]), opts)

    def teacher_log_prob(self, text, tokens):
        """Marian's own log-probability of our ``tokens`` and </s>: log_softmax of its logits."""
        back = {v: k for k, v in self.to_ours.items()}
        batch = self.hf_tokenizer([text], return_tensors="pt")
        target = torch.tensor([[back[t] for t in tokens] + [0]])
        start = torch.full((1, 1), self.hf.config.decoder_start_token_id)
        with torch.no_grad():
            logits = self.hf(**batch, decoder_input_ids=torch.cat([start, target[:, :-1]], 1)).logits
        return torch.log_softmax(logits[0], -1).gather(1, target[0][:, None]).sum().item()


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    root = tmp_path_factory.mktemp("marian")
    return Marian(make_marian(root / "hf", eos_bias=3.0), root / "export")


TEXTS = sentences(200, seed=7)


def test_the_tokenizer_gives_marian_tokenizers_ids(marian):
    batch = marian.hf_tokenizer(TEXTS, padding=False)["input_ids"]
    assert [ids + [EOS] for ids in marian.source_ids(TEXTS)] == [[marian.to_ours[i] for i in row] for row in batch]


def test_greedy_gives_generates_tokens_and_text_on_200_sentences(marian):
    from seq2seq.engine import Engine

    theirs, out = marian.generate(TEXTS, num_beams=1)
    assert len({tuple(t) for t in theirs}) > 80, "the random model gives most inputs the same output"
    opts = DecodingOptions(**{**marian.export.decoding, "beam_size": 1})
    reference = [h[0].tokens for h in marian.reference(TEXTS, opts)]
    assert reference == theirs
    engine = [h[0].tokens for h in Engine(marian.export_dir).translate_ids(marian.source_ids(TEXTS), opts)]
    assert engine == theirs
    texts = marian.hf_tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    assert [marian.export.tokenizer.tgt.decode(t) for t in engine] == texts


def test_greedy_log_probs_are_marians_within_1e_4(marian):
    opts = DecodingOptions(**{**marian.export.decoding, "beam_size": 1})
    hyps = [h[0] for h in marian.reference(TEXTS[:60], opts)]
    assert len({len(h.tokens) for h in hyps}) > 5, "the sentences should end at many lengths"
    for text, h in zip(TEXTS, hyps):  # float32 sums of up to 63 terms, in another order: 1e-4 a token
        assert h.log_prob == pytest.approx(marian.teacher_log_prob(text, h.tokens), abs=1e-4 * (len(h.tokens) + 1))


# generate()'s beam search and ours agree where generate() stops a sentence once num_beams
# hypotheses have ended (early_stopping=True): both take the 2k best continuations, keep an
# ending one only among the first k, and divide by L ** length_penalty, L counting </s>.
@pytest.mark.parametrize("penalty, name", [(0.0, "none"), (1.0, "average")])
@pytest.mark.parametrize("beams, n_best", [(4, 1), (5, 3)])
def test_beam_search_gives_generates_hypotheses_and_scores(marian, penalty, name, beams, n_best):
    from seq2seq.engine import Engine

    texts = TEXTS[:80]
    theirs, out = marian.generate(texts, num_beams=beams, length_penalty=penalty, early_stopping=True,
                                  num_return_sequences=n_best)
    opts = DecodingOptions(**{**marian.export.decoding, "beam_size": beams, "n_best": n_best,
                              "length_penalty": name, "early_stop": True})
    longest = opts.max_length
    # At the length limit generate() forces </s> and scores it 0, where ours scores </s> by its
    # log-probability: hypotheses there rank differently (docs/marian.md). The sentences whose
    # n-best all end before it must come out the same.
    short = [i for i in range(len(texts)) if all(len(t) < longest for t in theirs[i * n_best:(i + 1) * n_best])]
    assert len(short) > len(texts) // 2
    scores = out.sequences_scores.view(len(texts), n_best).tolist()
    for ours in (marian.reference(texts, opts), Engine(marian.export_dir).translate_ids(marian.source_ids(texts), opts)):
        for i in short:
            assert [h.tokens for h in ours[i]] == theirs[i * n_best:(i + 1) * n_best], f"sentence {i}"
            for h, score in zip(ours[i], scores[i]):  # 1e-4 a token, as in the greedy test
                assert h.score == pytest.approx(score, abs=1e-4 * (1 if name == "average" else len(h.tokens) + 1))


def test_a_target_language_code_is_one_token_as_marian_tokenizer_makes_it(marian):
    text = ">>yy<< " + TEXTS[0]
    theirs = [marian.to_ours[i] for i in marian.hf_tokenizer([text])["input_ids"][0]]
    assert marian.export.tokenizer.src.encode(text) + [EOS] == theirs
    assert marian.export.tokenizer.src.pieces(text)[0] == ">>yy<<"


@pytest.mark.parametrize("activation, scale", [("gelu", False), ("relu", True)])
def test_other_activations_and_unscaled_embeddings_import_as_marian_runs_them(tmp_path, activation, scale):
    from seq2seq.engine import Engine

    m = Marian(make_marian(tmp_path / "hf", activation=activation, scale_embedding=scale, eos_bias=3.0, seed=3,
                           init_std=0.3 if scale else 1.0),
               tmp_path / "export")
    assert (m.export.model_cfg.activation, m.export.model_cfg.scale_embeddings) == (activation, scale)
    theirs, _ = m.generate(TEXTS[:50], num_beams=1)
    assert len({tuple(t) for t in theirs}) > 25
    opts = DecodingOptions(**{**m.export.decoding, "beam_size": 1})
    assert [h[0].tokens for h in m.reference(TEXTS[:50], opts)] == theirs
    assert [h[0].tokens for h in Engine(m.export_dir).translate_ids(m.source_ids(TEXTS[:50]), opts)] == theirs


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small saved Marian directory that the refusal tests copy and damage."""
    return make_marian(tmp_path_factory.mktemp("marian_saved") / "hf", d_model=16, layers=1)


def damaged(saved: Path, tmp_path: Path, config=None, files=None) -> Path:
    folder = tmp_path / "hf"
    shutil.copytree(saved, folder)
    if config:
        values = json.loads((folder / "config.json").read_text())
        values.update(config)
        (folder / "config.json").write_text(json.dumps(values))
    for name, text in (files or {}).items():
        if text is None:
            (folder / name).unlink()
        else:
            (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("config, files, words", [
    (dict(model_type="bart"), None, ["model_type", "Marian"]),
    (dict(activation_function="gelu_new"), None, ["activation_function", "gelu_new", "swish"]),
    (dict(normalize_before=True), None, ["normalize_before", "post-norm"]),
    (dict(share_encoder_decoder_embeddings=False), None, ["share_encoder_decoder_embeddings"]),
    (dict(decoder_vocab_size=VOCAB + 2), None, ["decoder_vocab_size", "one vocabulary"]),
    (dict(decoder_ffn_dim=48), None, ["encoder_ffn_dim", "decoder_ffn_dim"]),
    (dict(encoder_attention_heads=2), None, ["encoder_attention_heads", "decoder_attention_heads"]),
    (dict(d_model=18), None, ["d_model=18", "heads=4"]),
    (dict(d_model=8, encoder_ffn_dim=16, decoder_ffn_dim=16), None, ["shared.weight", "shape"]),
    (dict(vocab_size=VOCAB + 5, decoder_vocab_size=VOCAB + 5), None, ["vocab.json", f"vocab_size {VOCAB + 5}"]),
    (dict(length_penalty=0.6), None, ["length_penalty", "average"]),
    (dict(decoder_start_token_id=VOCAB), None, ["decoder_start_token_id"]),
    (dict(eos_token_id=VOCAB - 1), None, ["eos_token_id", "three different tokens"]),
    (None, {"vocab.json": None}, ["vocab.json", "not found"]),
    (None, {"vocab.json": "{"}, ["vocab.json", "malformed JSON"]),
    (None, {"target.spm": None}, ["target.spm", "not found"]),
    (None, {"source.spm": "not a model"}, ["source.spm", "SentencePiece"]),
    (None, {"model.safetensors": None}, ["model.safetensors nor pytorch_model.bin"]),
    (None, {"model.safetensors": "garbage"}, ["model.safetensors", "not a readable safetensors"]),
    (None, {"tokenizer_config.json": json.dumps({"separate_vocabs": True})}, ["separate_vocabs"]),
])
def test_what_the_engine_cannot_represent_is_refused_naming_the_field(saved, tmp_path, config, files, words):
    folder = damaged(saved, tmp_path, config, files)
    # generation_config.json overrides config.json's generation fields: drop it so config.json's count.
    if config and set(config) & {"length_penalty", "decoder_start_token_id", "eos_token_id"}:
        (folder / "generation_config.json").unlink()
    with pytest.raises(MarianImportError) as e:
        import_marian(folder, tmp_path / "export")
    for word in words:
        assert word in str(e.value)
    assert not (tmp_path / "export").exists(), "a refused import writes nothing"


def test_weights_the_import_would_leave_out_are_refused(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = damaged(saved, tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    weights["model.encoder.layernorm_embedding.weight"] = torch.ones(16)  # mBART's, not Marian's
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(MarianImportError, match=r"encoder\.layernorm_embedding\.weight.*not be the same"):
        import_marian(folder, tmp_path / "export")


def test_a_pytorch_model_bin_imports_as_the_safetensors_file_does(saved, tmp_path):
    from safetensors.torch import load_file

    folder = damaged(saved, tmp_path)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    a, b = load_export(import_marian(saved, tmp_path / "a")), load_export(import_marian(folder, tmp_path / "b"))
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_the_cli_imports_and_refuses(saved, tmp_path):
    run = [sys.executable, "-m", "seq2seq", "import", "marian"]
    ok = subprocess.run(run + [str(saved), str(tmp_path / "export")], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "swish" in ok.stdout and "beam_size=4" in ok.stdout
    bad = subprocess.run(run + [str(tmp_path / "nowhere"), str(tmp_path / "x")], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode == 2 and "not a directory" in bad.stderr


def test_marian_positions_are_transformers_table():
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    for n, d in ((50, 12), (9, 7)):
        table = MarianSinusoidalPositionalEmbedding(n, d)
        table._init_weight()
        assert torch.equal(marian_positions(n, d), table.weight.detach())


@pytest.mark.parametrize("server", SERVERS)
def test_both_servers_serve_the_import_as_generate_translates(marian, server, tmp_path):
    from seq2seq.server.client import pb

    texts = TEXTS[:30]
    _, out = marian.generate(texts, num_beams=1)
    expected = marian.hf_tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    srv = Running(server, marian.export_dir, tmp_path / "server.log")
    try:
        answer = srv.stub.Translate(pb.TranslateRequest(sentences=texts, options=pb.DecodingOptions(beam_size=1)),
                                    timeout=120)
        assert [t.hypotheses[0].text for t in answer.translations] == expected
        # The export's defaults (OPUS-MT's beam of 4) apply where a request sets nothing.
        described = srv.stub.ListModels(pb.ListModelsRequest(), timeout=30)
        assert "beam_size: 4" in str(described)
    finally:
        srv.stop()


@pytest.mark.skipif(not TRANSLATE_BINARY.exists(), reason="seq2seq-translate is not built (make cpp)")
def test_the_cpp_translator_translates_the_import_as_generate_does(marian):
    texts = TEXTS[:30]
    _, out = marian.generate(texts, num_beams=1)
    done = subprocess.run([str(TRANSLATE_BINARY), str(marian.export_dir), "--beam-size", "1"], capture_output=True,
                          input="\n".join(texts) + "\n", text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == marian.hf_tokenizer.batch_decode(out.sequences, skip_special_tokens=True)


def test_ctranslate2s_own_conversion_decodes_the_import_as_generate_does(marian, tmp_path):
    pytest.importorskip("ctranslate2")
    from seq2seq.convert import CTranslate2Decoder, convert_marian_to_ctranslate2

    out = convert_marian_to_ctranslate2(marian.export_dir, tmp_path / "ct2")
    decoder = CTranslate2Decoder(out, exact_scores=False)
    assert decoder.suppress == [], "a Marian conversion has no <pad> or <bos> to hold back"
    theirs, _ = marian.generate(TEXTS, num_beams=1)
    opts = DecodingOptions(**{**marian.export.decoding, "beam_size": 1})
    assert [h[0].tokens for h in decoder.translate_ids(marian.source_ids(TEXTS), opts)] == theirs
