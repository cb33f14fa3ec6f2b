import unicodedata

from seq2seq.config import DataConfig
from seq2seq.data import load_dataset
from seq2seq.data.clean import filter_pairs, normalize


def test_nfc_and_whitespace():
    decomposed = unicodedata.normalize("NFD", "Ça a été")
    assert decomposed != "Ça a été"
    assert normalize(f"  {decomposed}\t\u00a0 fini\r\n") == "Ça a été fini"
    assert normalize("a\x00b\u200bc") == "a b\u200bc"


def test_lowercase_and_ascii_fold_are_off_by_default():
    assert normalize("Ça Été") == "Ça Été"
    assert normalize("Ça Été", lowercase=True) == "ça été"
    assert normalize("Ça Été Straße", ascii_fold=True) == "Ca Ete Straße"


def test_filters_report_what_they_removed():
    pairs = [("a b", "x y"), ("a", "x"), ("a b c d e f", "x"), ("a b", "x y"), ("one two three", "un deux trois")]
    kept, steps = filter_pairs(pairs, min_len=2, max_len=5, max_ratio=2.0, dedup=True)
    assert kept == [("a b", "x y"), ("one two three", "un deux trois")]
    assert [(s.name, s.removed) for s in steps] == [
        ("shorter than 2 words", 2), ("longer than 5 words", 0), ("length ratio above 2", 0), ("duplicate pairs", 1)]
    kept, steps = filter_pairs([("a b c d e", "x"), ("a b", "x")], max_ratio=2.0)
    assert kept == [("a b", "x")] and steps[0].removed == 1


def test_filters_touch_only_the_training_split(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("".join(f"word{i} " * (1 + i % 7) + f"\tmot{i}\n" for i in range(300)))
    data = load_dataset(DataConfig(files=(str(path),), max_len=3, val_size=50, test_size=50))
    assert max(len(s.split()) for s, _ in data.splits["train"]) <= 3
    assert max(len(s.split()) for s, _ in data.splits["test"]) > 3
    assert any("filter 'longer than 3 words' removed" in line for line in data.log)


def test_truncate_source_cuts_training_texts_instead_of_dropping_them(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("".join(f"{'w ' * (1 + i % 7)}end{i}\tsyn{i}\n" for i in range(300)))
    cfg = DataConfig(files=(str(path),), val_size=50, test_size=50, truncate_source=4, max_len=4)
    data = load_dataset(cfg)
    full = load_dataset(DataConfig(files=(str(path),), val_size=50, test_size=50))
    assert len(data.splits["train"]) == len(full.splits["train"])  # nothing dropped by max_len
    for (src, tgt), (whole, same) in zip(data.splits["train"], full.splits["train"]):
        assert tgt == same and src == " ".join(whole.split()[:4])
    cut = sum(len(s.split()) > 4 for s, _ in full.splits["train"])
    assert cut and f"cut {cut} source(s) to their first 4 words" in " ".join(data.log)
    assert data.splits["test"] == full.splits["test"]  # evaluation reads whole texts


def test_truncate_source_must_not_be_negative():
    import pytest
    with pytest.raises(Exception, match="truncate_source must be >= 0"):
        load_dataset(DataConfig(files=("x.tsv",), truncate_source=-1))
