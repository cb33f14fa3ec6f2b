import functools
import gzip
import http.server
import threading
import zipfile

import pytest

from seq2seq.cli import main
from seq2seq.config import DataConfig
from seq2seq.data import DataError, open_corpus
from seq2seq.data.corpora import read_lines
from seq2seq.data.fetch import fetch

QUIET = {"progress": False, "log": lambda *_: None}


@pytest.fixture
def mirror(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/mirror as MIRROR/<corpus>/<file>."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_multi30k_verifies_checksums(mirror, shared_data, tmp_path):
    root, url = mirror
    (root / "multi30k").mkdir()
    for f in (shared_data / "multi30k").glob("*.gz"):
        (root / "multi30k" / f.name).write_bytes(f.read_bytes())
    logged = []
    paths = fetch("multi30k", tmp_path / "data", mirror=url, progress=False, log=logged.append)
    assert len(paths) == 9 and all("sha256 verified" in line for line in logged)
    for p in paths:
        assert read_lines(p) == read_lines(shared_data / "multi30k" / p.name)
    corpus = open_corpus(DataConfig(corpus="multi30k", src="fr", tgt="en", data_dir=str(tmp_path / "data")))
    assert len(corpus.read("train")[0]) == 29000
    # Present files are kept; nothing is downloaded again without --force.
    logged.clear()
    fetch("multi30k", tmp_path / "data", mirror=url + "/nowhere", progress=False, log=logged.append)
    assert all("present, kept" in line for line in logged)


def test_fetch_plain_text_source_is_stored_gzipped(mirror, shared_data, tmp_path):
    root, url = mirror
    (root / "opennmt-ende").mkdir()
    for local, upstream in (("train.en", "src-train.txt"), ("train.de", "tgt-train.txt"),
                            ("val.en", "src-val.txt"), ("val.de", "tgt-val.txt")):
        (root / "opennmt-ende" / upstream).write_bytes(gzip.decompress((shared_data / "opennmt-ende" / f"{local}.gz").read_bytes()))
    fetch("opennmt-ende", tmp_path, mirror=url, **QUIET)
    corpus = open_corpus(DataConfig(corpus="opennmt-ende", src="en", tgt="de", data_dir=str(tmp_path)))
    pairs, report = corpus.read("train")
    assert len(pairs) == 9999 and report.empty_skipped == 1  # line 5 of train.en is empty upstream
    assert len(corpus.read("val")[0]) == 50


def test_fetch_tatoeba_converts_the_anki_export(mirror, tmp_path):
    root, url = mirror
    (root / "tatoeba").mkdir()
    for archive, member, other in (("fra-eng.zip", "fra.txt", "Bonjour"), ("deu-eng.zip", "deu.txt", "Hallo")):
        with zipfile.ZipFile(root / "tatoeba" / archive, "w") as z:
            z.writestr(member, "".join(f"Hello {i}.\t{other} {i}.\tCC-BY 2.0 (France) Attribution: #{i}\n"
                                       for i in range(40)))
            z.writestr("_about.txt", "about")
    logged = []
    fetch("tatoeba", tmp_path, mirror=url, progress=False, log=logged.append)
    assert all("no pinned checksum" in line for line in logged)
    assert read_lines(tmp_path / "tatoeba" / "eng-fra.tsv.gz")[3] == "Hello 3.\tBonjour 3."
    corpus = open_corpus(DataConfig(corpus="tatoeba", src="de", tgt="en", data_dir=str(tmp_path), val_size=5, test_size=5))
    assert sum(len(corpus.read(s)[0]) for s in corpus.split_names) == 40


def test_checksum_mismatch_removes_the_download(mirror, shared_data, tmp_path):
    root, url = mirror
    (root / "multi30k").mkdir()
    for f in (shared_data / "multi30k").glob("*.gz"):
        (root / "multi30k" / f.name).write_bytes(f.read_bytes())
    damaged = read_lines(shared_data / "multi30k" / "val.de.gz")
    damaged[10] = damaged[10].replace("e", "3")
    (root / "multi30k" / "val.de.gz").write_bytes(gzip.compress(("\n".join(damaged) + "\n").encode()))
    with pytest.raises(DataError, match=r"val\.de\.gz: checksum mismatch \(expected sha256 660e09eb.*removed"):
        fetch("multi30k", tmp_path, mirror=url, **QUIET)
    folder = tmp_path / "multi30k"
    assert not (folder / "val.de.gz").exists()
    assert not list(folder.glob("*.part")) and not list(folder.glob("*.tmp"))
    assert (folder / "train.de.gz").exists()  # files verified before the bad one are kept


def test_missing_file_upstream_is_reported(mirror, tmp_path, capsys):
    _, url = mirror
    with pytest.raises(DataError, match=r"/opennmt-ende/src-train\.txt: HTTP 404"):
        fetch("opennmt-ende", tmp_path, mirror=url, **QUIET)
    assert not list((tmp_path / "opennmt-ende").iterdir())
    assert main(["data", "fetch", "opennmt-ende", "--data-dir", str(tmp_path), "--mirror", url, "--quiet"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["data", "fetch", "wmt14", "--data-dir", str(tmp_path)]) == 2
    assert "unknown corpus 'wmt14'" in capsys.readouterr().err


def test_unreachable_server_is_reported(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="cannot download"):
        fetch("opennmt-ende", tmp_path, mirror=f"http://127.0.0.1:{port}", **QUIET)
