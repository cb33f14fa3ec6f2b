"""Downloading registered corpora into the data folder, with checksums.

Every download goes to a ``.part`` file, is checked, and only then moved into place;
a failed or mismatching download leaves nothing behind. ``mirror`` replaces each file's
public location with ``MIRROR/<corpus>/<upstream file name>`` (an internal mirror, or a
test server).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from seq2seq.data.corpora import REGISTRY, DataError, RemoteFile, unknown_corpus

CHUNK = 1 << 16


def source_url(name: str, remote: RemoteFile, mirror: str | None) -> str:
    if not mirror:
        return remote.url
    return f"{mirror.rstrip('/')}/{name}/{remote.url.rsplit('/', 1)[-1]}"


def download(url: str, dest: Path, progress: bool = True) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "seq2seq-data-fetch"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name.removesuffix(".part"),
                      disable=not progress, leave=False) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise DataError(f"{url}: download cut short ({out.tell()} of {total} bytes); try again")
    except urllib.error.HTTPError as e:
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"{url}: cannot download ({reason}); check the network, or pass --mirror URL") from None


def anki_to_tsv(archive: Path, member: str) -> bytes:
    """The first two columns (English, other language) of an Anki export as UTF-8 TSV."""
    try:
        with zipfile.ZipFile(archive) as z:
            text = z.read(member).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as e:
        raise DataError(f"{archive}: not the expected Anki export holding {member} ({e})") from None
    rows = ("\t".join(line.split("\t")[:2]) for line in text.splitlines() if line.strip())
    return ("\n".join(rows) + "\n").encode("utf-8")


def store(part: Path, remote: RemoteFile, target: Path) -> str:
    """Turn a downloaded file into its stored form; returns the sha256 of its text."""
    if remote.unpack == "gz":
        try:
            text = gzip.decompress(part.read_bytes())
        except (gzip.BadGzipFile, EOFError, OSError) as e:
            raise DataError(f"{remote.url}: not a valid gzip file ({e})") from None
        data = None
    elif remote.unpack == "text":
        text = part.read_bytes()
        data = gzip.compress(text, mtime=0)
    elif remote.unpack == "anki-zip":
        text = anki_to_tsv(part, remote.member)
        data = gzip.compress(text, mtime=0)
    else:
        raise ValueError(f"unknown unpack mode {remote.unpack!r}")
    digest = hashlib.sha256(text).hexdigest()
    if remote.sha256 and digest != remote.sha256:
        raise DataError(
            f"{target.name}: checksum mismatch (expected sha256 {remote.sha256}, got {digest}); "
            "the download was removed. The file upstream may have changed or been damaged in transit; "
            "try again, or report it if it persists"
        )
    if data is None:
        os.replace(part, target)
    else:
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return digest


def fetch(name: str, root: Path, mirror: str | None = None, force: bool = False,
          progress: bool = True, log=print) -> list[Path]:
    """Download every file of a registered corpus into ``root/name``; returns their paths."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise unknown_corpus(name)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for remote in spec.remote:
        target = folder / remote.local
        paths.append(target)
        if target.exists() and not force:
            log(f"{target}: present, kept (--force downloads again)")
            continue
        url = source_url(name, remote, mirror)
        part = folder / (remote.local + ".part")
        try:
            download(url, part, progress)
            digest = store(part, remote, target)
        finally:
            for leftover in (part, target.with_name(target.name + ".tmp")):
                leftover.unlink(missing_ok=True)
        if remote.sha256:
            log(f"{target}: downloaded, sha256 verified")
        else:
            log(f"{target}: downloaded from {url}; no pinned checksum (the source is updated in place), "
                f"sha256 of its text {digest}")
    return paths


def text_sha256(path: Path) -> str:
    """sha256 of a stored file's text (decompressed when it is .gz), as the registry pins it."""
    with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
        h = hashlib.sha256()
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()

