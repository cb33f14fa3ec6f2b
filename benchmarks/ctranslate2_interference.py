"""The engine's speed in a process before and after CTranslate2 has decoded in it: CTranslate2
bundles its own OpenMP runtime, which slowed the engine in the same process until exit
(why `seq2seq bench --against ctranslate2` times each peer in a process of its own).

    python benchmarks/ctranslate2_interference.py runs/tatoeba_fr_en_transformer/export 2   # CT2 threads
"""
import sys
import tempfile
import time
from pathlib import Path

import torch

from seq2seq.config import DecodingOptions
from seq2seq.convert import CTranslate2Decoder, convert_to_ctranslate2
from seq2seq.data import load_dataset
from seq2seq.engine import Engine


def main() -> int:
    export, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(2)
    eng = Engine(export, threads=2)
    pairs = load_dataset(eng.data_cfg, ["test"]).splits["test"][:100]
    ids = [eng.encode(s) for s, _ in pairs]
    opts = DecodingOptions(beam_size=5, length_penalty="none")

    def speed(label):
        eng.decode_ids(ids[:2], opts)
        t = time.perf_counter()
        for s in ids:
            eng.decode_ids([s], opts)
        print(f"engine, beam 5, batch 1, {label}: {len(ids) / (time.perf_counter() - t):.1f} sentences/s", flush=True)

    speed("alone")
    out = convert_to_ctranslate2(export, Path(tempfile.mkdtemp()) / "ct2", quantization="float32")
    peer = CTranslate2Decoder(out, compute_type="float32", intra_threads=threads, exact_scores=False)
    speed(f"CTranslate2 ({threads} threads) loaded")
    for s in ids[:50]:
        peer.decode_ids([s], opts)
    speed("after 50 CTranslate2 calls")
    time.sleep(2)
    speed("2 s later")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
