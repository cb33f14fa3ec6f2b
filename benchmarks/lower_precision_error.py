"""How far int8 and bfloat16 move a hypothesis' log-probability, in activation steps: the
figures behind tests/test_engine.py's rounding_tolerance.

For every engine family of the tests (random weights), 40 sentences, greedy and beam 5,
outputs of at most 3 tokens: |engine - reference with rounded weights| / (|log_prob| + 1),
divided by the activation step this CPU uses (int8: 1 / (2^(bits-1) - 1); bfloat16: 2^-8).
Prints a row per family and the largest value per compute type.

    python benchmarks/lower_precision_error.py
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the random models of tests/

from seq2seq.config import DecodingOptions
from seq2seq.engine import Engine, build_summary
from tests.exports import random_export
from tests.test_engine import (ENGINE_FAMILIES, TRANSFORMER_VARIANTS, activation_step, random_sources,
                               rounded_weights_reference)
from tests.test_models import FAMILIES


def main() -> None:
    print(build_summary())
    print("| family | compute type | beam | largest error, in steps x (abs(log_prob) + 1) |\n|---|---|---:|---:|")
    worst = {}
    root = Path(tempfile.mkdtemp())
    for name in ENGINE_FAMILIES:
        family, changes = (name, {}) if name in FAMILIES else TRANSFORMER_VARIANTS[name]
        folder = random_export(root / name, family, **changes)
        for compute_type in ("int8", "bfloat16"):
            engine, reference = Engine(folder, compute_type=compute_type), rounded_weights_reference(folder,
                                                                                                      compute_type)
            sources = random_sources(40, seed=5)
            for beam in (1, 5):
                opts = DecodingOptions(beam_size=beam, max_length=3)
                ours, theirs = engine.translate_ids(sources, opts), reference.decode_ids(sources, opts)
                steps = [abs(a[0].log_prob - b[0].log_prob) / (abs(b[0].log_prob) + 1) / activation_step(compute_type)
                         for a, b in zip(ours, theirs) if a[0].tokens == b[0].tokens]
                print(f"| {name} | {compute_type} | {beam} | {max(steps):.2f} |")
                worst[compute_type] = max(worst.get(compute_type, 0.0), max(steps))
    print("largest: " + ", ".join(f"{t} {v:.2f} steps" for t, v in worst.items()) +
          " (tests/test_engine.py allows 4)")


if __name__ == "__main__":
    main()
