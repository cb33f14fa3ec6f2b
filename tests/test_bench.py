"""seq2seq bench: its cases, measurements and table (the speed itself is not tested)."""

import json

import pytest

from seq2seq import bench
from seq2seq.config import DecodingOptions
from seq2seq.translate import Translator
from tests.exports import random_export

pytest.importorskip("seq2seq._C", reason="the C++ engine is not built")
from seq2seq.engine import Engine  # noqa: E402


def test_cases_are_parsed_and_bad_ones_named():
    cases = bench.parse_cases("greedy:1, beam5:32")
    assert [(c.name, c.beam_size, c.batch) for c in cases] == [("greedy:1", 1, 1), ("beam5:32", 5, 32)]
    for bad in ("beam:4", "greedy", "greedy:0", "topk:3", "beam0:2"):
        with pytest.raises(ValueError, match="SEARCH:BATCH"):
            bench.parse_cases(bad)


def test_bench_measures_both_backends_on_the_same_sentences(tmp_path):
    folder = random_export(tmp_path, "bahdanau-gru-bi")
    translators = {"cpp float32": Engine(folder), "cpp int8": Engine(folder, compute_type="int8"),
                   "python": Translator(folder)}
    sources = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16, 17], [18, 19]]
    cases = bench.parse_cases("greedy:1,beam3:4")
    opts = DecodingOptions(max_length_ratio=1.0, max_length_extra=3)
    logged = []
    results = bench.bench(translators, sources, cases, opts, log=logged.append, rounds=3)
    # The backends take turns: each round measures every backend once, in order.
    measured = [line[11:23].strip() for line in logged if "sent/s" in line]
    assert measured[:6] == ["cpp float32", "cpp int8", "python"] * 2
    for case in cases:
        row = results[case.name]
        for r in row.values():  # the reported round is the one of median speed
            assert len(r["rounds"]) == 3 and round(r["sentences_per_s"], 1) == sorted(r["rounds"])[1]
        assert row["cpp float32"]["identical"] == len(sources)  # float32 is the parity reference
        for r in row.values():
            assert r["sentences_per_s"] > 0 and r["p90_ms"] >= r["p50_ms"] > 0 and len(r["outputs"]) == len(sources)
            assert r["output_tokens"] == sum(len(o) + 1 for o in r["outputs"])
    table = bench.markdown(results, cases)
    assert table.count("\n") == 2 + 3 * len(cases) and "x |" in table
    model = translators["python"].model
    lines = bench.limits(translators["python"].model_cfg, model, sources, results, cases)
    assert sum("GFLOP/s" in line for line in lines) == 2 and sum("GB/s" in line for line in lines) == 2
    assert all("the faster of MKL and oneDNN" in line for line in lines if "GFLOP/s" in line)
    # A peer's backend gets its compute line by the same count: as fast as the engine, the same GFLOP/s.
    results["beam3:4"]["ct2 float32 1t"] = dict(results["beam3:4"]["cpp float32"])
    peer_lines = bench.limits(translators["python"].model_cfg, model, sources, results, cases)
    ours, peer = (next(line for line in peer_lines if f"beam3:4, {b}:" in line) for b in ("cpp float32", "ct2 float32 1t"))
    assert ours.split(": ", 1)[1] == peer.split(": ", 1)[1]
    gflops, library = bench.matmul_gflops(8, 16, 32)
    assert gflops > 0 and library in ("MKL", "oneDNN")


def test_model_flops_counts_encoder_and_beam_rows(tmp_path):
    translator = Translator(random_export(tmp_path, "luong-dot"))
    cfg, model = translator.model_cfg, translator.model
    one = bench.model_flops(cfg, model, [[5, 6]], [[7]], beam=1)
    five = bench.model_flops(cfg, model, [[5, 6]], [[7]], beam=5)
    step = bench.decoder_step_weights(model)
    # Two output rows (a token and <eos>) per beam; the encoder runs once.
    assert five - one == pytest.approx(2 * 4 * 2 * (step + 3 * (cfg.hidden + cfg.hidden)))


def test_bench_command_writes_its_table_and_json(tmp_path, capsys):
    from seq2seq.cli import main

    folder = random_export(tmp_path, "gru")
    out, text = tmp_path / "bench.json", tmp_path / "in.txt"
    text.write_text("w5 w6 w7\nw8\nw9 w10\n\nw11 w12\nw13\nw14\n")  # the empty line is left out
    assert main(["bench", "--model", str(folder), "--input", str(text), "--sentences", "6", "--cases", "greedy:1,beam2:2",
                 "--max-length", "6", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| greedy:1 | cpp float32 |" in printed and "| beam2:2 | python |" in printed
    report = json.loads(out.read_text())
    assert report["sentences"] == 5 and set(report["results"]["beam2:2"]) == {"cpp float32", "cpp int8", "python"}
    assert (tmp_path / "bench.png").stat().st_size > 0 and str(tmp_path / "bench.png") in printed


def test_bench_command_runs_the_engine_alone_in_two_compute_types(tmp_path, capsys):
    from seq2seq.cli import main

    folder = random_export(tmp_path, "gru")
    text = tmp_path / "in.txt"
    text.write_text("w5 w6 w7\nw8\nw9 w10\n")
    assert main(["bench", "--model", str(folder), "--input", str(text), "--cases", "greedy:2", "--backend", "cpp",
                 "--max-length", "6"]) == 0
    printed = capsys.readouterr().out
    assert "| greedy:2 | cpp float32 |" in printed and "| greedy:2 | cpp int8 |" in printed
    assert "python" not in printed.split("\n\n", 1)[1]
    # One lower-precision type alone keeps its name, so its limit lines count its own bytes.
    assert main(["bench", "--model", str(folder), "--input", str(text), "--cases", "greedy:1", "--backend", "cpp",
                 "--compute-type", "int8", "--max-length", "6"]) == 0
    printed = capsys.readouterr().out
    assert "| greedy:1 | cpp int8 |" in printed and "memory, greedy:1, cpp int8:" in printed


def test_bench_command_names_each_products_kernel_and_keeps_cores_busy(tmp_path, capsys):
    import os

    from seq2seq.cli import main

    folder = random_export(tmp_path, "gru")
    text = tmp_path / "in.txt"
    text.write_text("w5 w6 w7\nw8\nw9 w10\n")
    busy = ["--busy-cores", "1"] if len(os.sched_getaffinity(0)) > 1 else []
    assert main(["bench", "--model", str(folder), "--input", str(text), "--cases", "greedy:1,beam5:4", "--backend",
                 "cpp", "--compute-type", "float32", "--max-length", "6", *busy]) == 0
    printed = capsys.readouterr().out
    kernels = [line for line in printed.splitlines() if line.startswith("kernels, float32, ")]
    assert kernels and all("greedy:1 engine panels; beam5:4 " in line for line in kernels)
    if busy:
        assert f"cores {sorted(os.sched_getaffinity(0))[-1]} kept busy" in printed


def test_busy_cores_must_leave_one_core_free():
    import os

    cores = len(os.sched_getaffinity(0))
    for bad in (-1, cores):
        with pytest.raises(ValueError, match=f"--busy-cores must be 0 to {cores - 1}"):
            bench.BusyCores(bad)
