"""A random Marian model of OPUS-MT's shapes, saved as Hugging Face saves Helsinki-NLP/opus-mt-fr-en,
for measuring speed and memory at that size (docs/bench.md, "OPUS-MT size"):

    python benchmarks/opus_mt_size.py runs/opus-mt-size
    seq2seq import marian runs/opus-mt-size runs/opus-mt-size-export
    seq2seq bench --model runs/opus-mt-size-export --against ctranslate2 ...

Shapes as opus-mt-fr-en's config.json: d_model 512, 6 + 6 layers, 8 heads, feed-forward
2048, swish, 59,514 shared tokens, 512 positions, embeddings scaled. The SentencePiece
models are trained here on Tatoeba's French and English (from $SEQ2SEQ_DATA, 8,000 pieces
a side), so sources have realistic token counts; the rest of vocab.json is filler pieces.

The weights are random (transformers' initialization, init_std 0.02), so translations are
meaningless, and </s> gets a logit bias of -100: no sentence ends early, every backend
decodes each sentence to the same length limit (set it with --max-length-ratio and
--max-length-extra when benchmarking), and the work compared is the same.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from pathlib import Path

OPUS_MT_FR_EN = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                     decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, vocab_size=59514,
                     decoder_vocab_size=59514, max_position_embeddings=512, activation_function="swish",
                     scale_embedding=True, share_encoder_decoder_embeddings=True)


def tatoeba_side(column: int, limit: int = 200_000) -> list[str]:
    from seq2seq.config import DataConfig
    from seq2seq.data import load_dataset

    data = load_dataset(DataConfig(corpus="tatoeba", src="fr", tgt="en", data_dir=os.environ.get("SEQ2SEQ_DATA", "")),
                        ["train"])
    return [pair[column] for pair in data.splits["train"][:limit]]


def sentencepiece(lines: list[str], size: int) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=size,
                                   model_type="unigram", character_coverage=1.0, hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2,
                                   pad_id=-1, num_threads=2, minloglevel=2)
    return model.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the directory to write")
    parser.add_argument("--pieces", type=int, default=8000, help="SentencePiece pieces a side")
    args = parser.parse_args()
    import sentencepiece as spm
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    out = Path(args.out)
    work = out / "spm"
    work.mkdir(parents=True, exist_ok=True)
    (work / "source.spm").write_bytes(sentencepiece(tatoeba_side(0), args.pieces))
    (work / "target.spm").write_bytes(sentencepiece(tatoeba_side(1), args.pieces))
    size = OPUS_MT_FR_EN["vocab_size"]
    pieces = ["</s>", "<unk>"]
    for side in ("source.spm", "target.spm"):
        sp = spm.SentencePieceProcessor(model_file=str(work / side))
        pieces += [p for p in (sp.id_to_piece(i) for i in range(sp.get_piece_size())
                               if not sp.is_control(i) and not sp.is_unknown(i)) if p not in set(pieces)]
    pieces += [f"<filler_{i}>" for i in range(size - 1 - len(pieces))] + ["<pad>"]
    (work / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}, ensure_ascii=False))
    MarianTokenizer(str(work / "source.spm"), str(work / "target.spm"), str(work / "vocab.json"),
                    source_lang="fr", target_lang="en").save_pretrained(out)
    shutil.rmtree(work)
    pad = size - 1
    config = MarianConfig(**OPUS_MT_FR_EN, pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0,
                          forced_eos_token_id=0)
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        model.final_logits_bias[0, 0] = -100.0
    # opus-mt-fr-en's generation_config.json
    model.generation_config = GenerationConfig(bad_words_ids=[[pad]], decoder_start_token_id=pad, eos_token_id=0,
                                               forced_eos_token_id=0, max_length=512, num_beams=4, pad_token_id=pad)
    model.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    print(f"{out}: random Marian model of opus-mt-fr-en's shapes, {params:,} parameters")


if __name__ == "__main__":
    main()
