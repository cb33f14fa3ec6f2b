import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_report_header(config):
    from seq2seq.engine import build_summary

    return build_summary()


def shared_data_dir() -> Path | None:
    for candidate in (os.environ.get("SEQ2SEQ_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "multi30k").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("the corpora folder (../shared/data or $SEQ2SEQ_DATA) is not on this machine")
    return path


def write_gz(path: Path, lines: list[str]) -> Path:
    import gzip

    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path
