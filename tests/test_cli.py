import json
import subprocess
import sys

from seq2seq.cli import main
from seq2seq.data import PairTokenizer
from tests.conftest import REPO


def test_stats_on_a_user_tsv(tmp_path, capsys):
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{'w ' * (1 + i % 5)}\t{'m ' * (2 + i % 3)}\n" for i in range(100)))
    assert main(["data", "stats", str(path), "--val-size", "10", "--test-size", "10"]) == 0
    out = capsys.readouterr().out
    assert "pairs.tsv" in out
    rows = [line for line in out.splitlines() if line.startswith(("train", "val ", "test"))]
    assert sum(int(r.split()[1].replace(",", "")) for r in rows) == 100


def test_stats_on_multi30k(shared_data, capsys):
    assert main(["data", "stats", "multi30k", "--src", "de", "--tgt", "en", "--data-dir", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "train                29,000 | de" in out and "test_2016_flickr      1,000" in out


def test_prepare_saves_a_tokenizer_trained_on_train_only(tmp_path, capsys):
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"le chat {i} dort\tthe cat {i} sleeps\n" for i in range(200)))
    out = tmp_path / "out"
    assert main(["data", "prepare", str(path), "--tokenizer", "word", "--min-freq", "1", "--val-size", "20",
                 "--test-size", "20", "--out", str(out), "--quiet"]) == 0
    tok = PairTokenizer.load(out / "tokenizer")
    config = json.loads((out / "data_config.json").read_text())
    assert config["tokenizer"] == "word" and config["files"] == [str(path)]
    # Numbers that only occur in the val and test splits are not in the vocabulary.
    from seq2seq.data import DataConfig, load_dataset
    data = load_dataset(DataConfig(files=(str(path),), val_size=20, test_size=20))
    held_out = {s.split()[2] for split in ("val", "test") for s, _ in data.splits[split]}
    assert held_out and not any("\u2581" + n in tok.src.index for n in held_out)


def test_errors_exit_2_with_a_message():
    run = subprocess.run([sys.executable, "-m", "seq2seq", "data", "stats", "multi30k", "--src", "xx", "--tgt", "en",
                          "--data-dir", "/nonexistent"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "seq2seq", "data", "stats", "copy", "--tokenizer", "chars"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2 and "tokenizer='chars' is not valid" in run.stderr


def test_evaluate_help_says_what_each_task_gets(capsys):
    import pytest

    from seq2seq.config import TASK_METRICS, DataConfig, validate_data_config

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for task in TASK_METRICS:
        validate_data_config(DataConfig(task=task))  # every task the data may name
        assert f"{task}: " in text
    for metric in ("BLEU", "chrF", "ROUGE-1/2/L", "character error rate", "NEWS mean F-score", "perplexity"):
        assert metric in text
