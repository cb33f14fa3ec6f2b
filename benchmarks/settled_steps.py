"""How many decoder rows beam search runs with and without the early end of settled sentences
(seq2seq/decoding.py: ``settled``), on the Python reference, one sentence at a time, and
whether every output stays the same. Rows, not seconds: the count does not depend on the machine.

    python benchmarks/settled_steps.py runs/tatoeba_fr_en_transformer/export --sentences 200
"""

from __future__ import annotations

import argparse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="an export directory")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--split", default="test")
    parser.add_argument("--beam-size", type=int, default=5)
    args = parser.parse_args()

    import seq2seq.decoding as decoding
    from seq2seq.config import DecodingOptions
    from seq2seq.data import load_dataset
    from seq2seq.translate import Translator

    translator = Translator(args.export)
    model = translator.model
    rows = [0]
    step = model.decode_step

    def counted(prev, state):
        rows[0] += prev.size(0)
        return step(prev, state)

    model.decode_step = counted
    pairs = load_dataset(translator.data_cfg, [args.split]).splits[args.split][: args.sentences]
    sources = [ids for ids in (translator.encode(s) for s, _ in pairs) if ids]
    settled = decoding.settled
    print(f"{len(sources)} sentences of {args.split}, beam {args.beam_size}, one at a time")
    print("| length penalty | rows, searching on | rows, settled sentences end | saved | same outputs |")
    print("|---|---:|---:|---:|---:|")
    for penalty in ("none", "gnmt"):
        opts = DecodingOptions(beam_size=args.beam_size, length_penalty=penalty)
        counts, outputs = [], []
        for rule in (lambda *a: False, settled):
            decoding.settled = rule
            rows[0] = 0
            outputs.append([translator.decode_ids([s], opts)[0][0].tokens for s in sources])
            counts.append(rows[0])
        decoding.settled = settled
        same = sum(a == b for a, b in zip(*outputs))
        print(f"| {penalty} | {counts[0]} | {counts[1]} | {1 - counts[1] / counts[0]:.0%} | {same} of {len(sources)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
