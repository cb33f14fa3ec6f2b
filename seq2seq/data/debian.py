"""Debian package descriptions as a summarization corpus: long description -> synopsis.

Reads two files of ``DATA_DIR/debian-descriptions/`` (``seq2seq data fetch
debian-descriptions`` writes them):

* ``bookworm-main-Translation-en.gz``, Debian's ``i18n/Translation-en`` index: records
  separated by blank lines, each with ``Package:``, ``Description-md5:`` and
  ``Description-en: <synopsis>`` followed by the long description as lines that start with
  one space (a line `` .`` is a paragraph break, lines with two spaces are verbatim);
* ``bookworm-main-amd64-sources.tsv.gz``: binary package TAB source package (a package
  missing from it is its own source).

The long text becomes one line (paragraphs joined, whitespace collapsed), since the pipeline
reads one example per line. Texts under ``MIN_WORDS`` words are skipped and identical texts
kept once (the first), both counted in the report. Each pair's split key is its source
package, so the ``-dev``, ``-doc`` and ``-dbg`` packages of one source, whose texts are
near copies, all land in the same split.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

from seq2seq.data.corpora import REGISTRY, DataError, Pair, ReadReport, _not_found, read_lines

NAME = "debian-descriptions"
TRANSLATION = "bookworm-main-Translation-en.gz"
SOURCES = "bookworm-main-amd64-sources.tsv.gz"
MIN_WORDS = 20


@dataclass
class Record:
    package: str
    synopsis: str
    text: str  # the long description on one line
    line: int  # where the record starts in its file


@dataclass
class DebianReport(ReadReport):
    """ReadReport plus what the description filters removed."""

    records: int = 0  # well-formed records read
    short_skipped: int = 0  # long text under MIN_WORDS words
    duplicates_removed: int = 0  # long text identical to an earlier record's

    def lines(self, where: str) -> list[str]:
        out = [f"{where}: {self.records} description record(s) read"]
        if self.bad_skipped:
            out.append(f"{where}: skipped {self.bad_skipped} malformed record(s) without Package or Description-en")
        if self.short_skipped:
            out.append(f"{where}: skipped {self.short_skipped} description(s) of under {MIN_WORDS} words")
        if self.empty_skipped:
            out.append(f"{where}: skipped {self.empty_skipped} description(s) with an empty synopsis")
        if self.duplicates_removed:
            out.append(f"{where}: removed {self.duplicates_removed} description(s) identical to an earlier one")
        return out


def _lines(path: Path) -> list[str]:
    """The lines of a gzipped UTF-8 file; read_lines (slower) explains any damage."""
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError):
        return read_lines(path)
    lines = text.lstrip("\ufeff").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _is_field(line: str) -> bool:
    name, colon, _ = line.partition(":")
    return bool(colon) and bool(name) and " " not in name and "\t" not in name


def _refetch(path: Path) -> str:
    return f"fetch it again with: seq2seq data fetch {NAME} --data-dir {path.parent.parent} --force"


def parse_translation(lines: list[str], path: Path) -> tuple[list[Record], int]:
    """Records of a Translation index, and how many records were malformed (no
    ``Package:`` or no ``Description-en:``, or a line that is neither a field nor a
    continuation). A file that is no such index at all is a DataError."""
    records: list[Record] = []
    bad = 0
    first_line = None
    n = len(lines)
    i = 0
    while i < n:
        if not lines[i].strip():
            i += 1
            continue
        start = i
        if first_line is None:
            first_line = start
            if not _is_field(lines[start]):
                raise DataError(
                    f"{path}:{start + 1}: not a Debian Translation index (expected 'Package: NAME', "
                    f"found {lines[start][:60]!r}); {_refetch(path)}"
                )
        package = synopsis = None
        long_lines: list[str] = []
        field = ""
        malformed = False
        while i < n and lines[i].strip():
            line = lines[i]
            if line[0] in " \t":
                if field == "description-en":
                    long_lines.append(line[1:])
            elif _is_field(line):
                name, _, value = line.partition(":")
                field = name.lower()
                if field == "package":
                    package = value.strip()
                elif field == "description-en":
                    synopsis = " ".join(value.split())
            else:
                malformed = True
            i += 1
        if malformed or not package or synopsis is None:
            bad += 1
            continue
        text = " ".join(" ".join("" if l.strip() == "." else l for l in long_lines).split())
        records.append(Record(package, synopsis, text, start + 1))
    if not records:
        where = f"{path}:{first_line + 1}" if first_line is not None else f"{path}"
        raise DataError(
            f"{where}: not a Debian Translation index (no record with Package: and Description-en:); "
            + _refetch(path)
        )
    return records, bad


def read_sources(path: Path) -> dict[str, str]:
    """package -> source package, from the package TAB source file."""
    sources = {}
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 2 or not cols[0] or not cols[1]:
            raise DataError(
                f"{path}:{lineno}: expected 'package TAB source package', found {line[:60]!r}; "
                + _refetch(path)
            )
        sources.setdefault(cols[0], cols[1])
    return sources


def build_pairs(records: list[Record], sources: dict[str, str],
                report: DebianReport) -> tuple[list[Pair], list[str]]:
    """(long text, synopsis) pairs with their source package as key, filtered and deduplicated."""
    pairs: list[Pair] = []
    keys: list[str] = []
    seen: set[str] = set()
    for r in records:
        if len(r.text.split()) < MIN_WORDS:
            report.short_skipped += 1
        elif not r.synopsis:
            report.empty_skipped += 1
        elif r.text in seen:
            report.duplicates_removed += 1
        else:
            seen.add(r.text)
            pairs.append((r.text, r.synopsis))
            keys.append(sources.get(r.package, r.package))
    report.pairs += len(pairs)
    return pairs, keys


def read_pairs(root: Path, src: str, tgt: str, cfg) -> tuple[list[Pair], DebianReport, list[str]]:
    """All (long description, synopsis) pairs, their report and a source-package key each."""
    folder = root / NAME
    paths = [folder / TRANSLATION, folder / SOURCES]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise _not_found(REGISTRY[NAME], root, missing)
    records, bad = parse_translation(_lines(paths[0]), paths[0])
    report = DebianReport(records=len(records), bad_skipped=bad)
    pairs, keys = build_pairs(records, read_sources(paths[1]), report)
    return pairs, report, keys
