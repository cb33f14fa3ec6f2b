"""A Hugging Face Marian model (OPUS-MT) as an export of this project.

    seq2seq import marian opus-mt-fr-en exports/opus-mt-fr-en

reads a directory as ``MarianMTModel.save_pretrained`` and ``huggingface-cli download``
leave it (config.json, model.safetensors or pytorch_model.bin, source.spm, target.spm,
vocab.json, tokenizer_config.json) and writes config.json, model.safetensors and the
tokenizer, which every decoder, server and tool of the project loads. Nothing here needs
the ``transformers`` package.

How the Marian model becomes a Transformer of seq2seq/models.py:
- Post-norm layers with no final norm, the feed-forward's activation (swish, GELU or
  ReLU), embeddings scaled by sqrt(d_model) as ``scale_embedding`` says, and the output
  layer's bias is Marian's ``final_logits_bias``.
- Marian's position table (sines in the first half of each row, cosines in the second) is
  stored in the export as the model's position table (``positions = "learned"``), computed
  in float64 as transformers computes it.
- Token ids: this project's specials sit at 0-3 (<pad>, <unk>, <bos>, <eos>), Marian's
  anywhere (</s> is 0 and <pad> last in OPUS-MT). The import reorders the vocabulary: our
  id i is Marian's ``order[i]``, with Marian's pad, unk, decoder start token and eos first.
  Our <bos> holds the embedding of Marian's ``decoder_start_token_id`` (its pad), so the
  decoder starts as Marian's does; its output logit gets a bias of -1e9, so that the
  softmax runs over Marian's own tokens (a <bos> is never produced anyway, as Marian never
  produces its pad). The tokenizer maps SentencePiece pieces through the reordered
  ``vocab.json`` list, as MarianTokenizer maps them through vocab.json.
- Decoding defaults (``decoding_defaults``): beam size, length penalty, early stopping
  and maximum length of Hugging Face's generate(), as docs/marian.md explains.

Whatever the engine cannot represent is refused with the field named, never imported as a
different model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from seq2seq.config import DataConfig, ModelConfig, validate_model_config
from seq2seq.data import tokenizers
from seq2seq.data.tokenizers import BOS, SPECIALS, PairTokenizer, SentencePieceTokenizer

# The activations of transformers' ACT2FN that the engine has, under ModelConfig's names.
ACTIVATIONS = {"swish": "swish", "silu": "swish", "gelu": "gelu", "relu": "relu"}
NEVER_BIAS = -1e9  # the output bias of <bos>: exp() of it is 0 in float32
# Options of a Marian config that change the network where they are set: (field, the value
# the engine reproduces, what to say).
FIXED_FIELDS = (
    ("model_type", "marian", "only Marian (MarianMTModel) directories are imported"),
    ("is_encoder_decoder", True, "the engine runs encoder-decoder models"),
    ("normalize_before", False, "the engine imports Marian's post-norm layers"),
    ("add_final_layer_norm", False, "Marian has no norm after the last layer"),
    ("normalize_embedding", False, "the engine has no norm on the embeddings"),
    ("static_position_embeddings", True, "the engine imports Marian's sinusoidal positions"),
    ("share_encoder_decoder_embeddings", True, "the encoder and decoder must share one vocabulary"),
    ("add_bias_logits", False, "the logits' only bias is final_logits_bias"),
)


class MarianImportError(ValueError):
    """A Marian directory that cannot be imported: the message names the file and the field."""


def read_json(path: Path) -> dict:
    value = tokenizers.read_json(path, "not found; a Marian model directory (as save_pretrained or `huggingface-cli "
                                       "download Helsinki-NLP/opus-mt-...` writes it) holds it", MarianImportError)
    if not isinstance(value, dict):
        raise MarianImportError(f"{path}: expected a JSON object")
    return value


def read_config(folder: Path) -> dict:
    """config.json, its generation fields overridden by generation_config.json's."""
    config = read_json(folder / "config.json")
    if (folder / "generation_config.json").is_file():
        config.update(read_json(folder / "generation_config.json"))
    return config


def model_config(hf: dict, where: Path) -> ModelConfig:
    """The ModelConfig of a Marian config (vocabulary sizes with the import's added <bos>)."""
    for name, value, why in FIXED_FIELDS:
        if name in hf and hf[name] != value:
            raise MarianImportError(f"{where}: {name} is {json.dumps(hf[name])}; {why}, so only {json.dumps(value)} "
                                    "can be imported")
    for name in ("d_model", "vocab_size", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                 "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
                 "pad_token_id", "eos_token_id"):
        if not isinstance(hf.get(name), int) or isinstance(hf.get(name), bool):
            raise MarianImportError(f"{where}: {name} must be an integer, not {json.dumps(hf.get(name))}")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf[a] != hf[b]:
            raise MarianImportError(f"{where}: {a}={hf[a]} differs from {b}={hf[b]}; the engine's encoder and "
                                    "decoder layers have one size")
    if hf.get("decoder_vocab_size", hf["vocab_size"]) != hf["vocab_size"]:
        raise MarianImportError(f"{where}: decoder_vocab_size={hf['decoder_vocab_size']} differs from vocab_size="
                                f"{hf['vocab_size']}; the encoder and decoder must share one vocabulary")
    activation = hf.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise MarianImportError(f"{where}: activation_function {json.dumps(activation)} is not one the engine has; "
                                f"it has {', '.join(sorted(ACTIVATIONS))}")
    cfg = ModelConfig(family="transformer", src_vocab=hf["vocab_size"] + 1, tgt_vocab=hf["vocab_size"] + 1,
                      dropout=0.0, d_model=hf["d_model"], heads=hf["encoder_attention_heads"],
                      ff_dim=hf["encoder_ffn_dim"], enc_layers=hf["encoder_layers"], dec_layers=hf["decoder_layers"],
                      norm="post", positions="learned", max_positions=hf["max_position_embeddings"],
                      tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                      activation=ACTIVATIONS[activation], scale_embeddings=bool(hf.get("scale_embedding", False)))
    try:
        validate_model_config(cfg)
    except ValueError as e:
        raise MarianImportError(f"{where}: {e}") from None
    return cfg


def vocabulary(folder: Path, hf: dict) -> tuple[list[int], list[str]]:
    """(order, pieces): our id i is Marian's id order[i], spelled pieces[i]."""
    path = folder / "vocab.json"
    vocab = read_json(path)
    size = hf["vocab_size"]
    by_id = {}
    for piece, i in vocab.items():
        if not isinstance(i, int) or not 0 <= i < size:
            raise MarianImportError(f"{path}: {json.dumps(piece)} has id {json.dumps(i)}, outside the model's "
                                    f"vocab_size {size}")
        if i in by_id:
            raise MarianImportError(f"{path}: id {i} is given to both {json.dumps(by_id[i])} and {json.dumps(piece)}")
        by_id[i] = piece
    if len(by_id) != size:
        missing = sorted(set(range(size)) - set(by_id))[:5]
        raise MarianImportError(f"{path}: has {len(by_id)} pieces for the model's vocab_size {size} (no piece for "
                                f"id(s) {missing}); the vocabulary and config.json come from different models")
    if "<unk>" not in vocab:
        raise MarianImportError(f"{path}: has no <unk> piece")
    pad, eos, unk = hf["pad_token_id"], hf["eos_token_id"], vocab["<unk>"]
    start = hf.get("decoder_start_token_id", pad)
    if not isinstance(start, int) or not 0 <= start < size:
        raise MarianImportError(f"{folder / 'config.json'}: decoder_start_token_id {json.dumps(start)} is not a "
                                f"token id below vocab_size {size}")
    if len({pad, unk, eos}) != 3:
        raise MarianImportError(f"{folder / 'config.json'}: pad_token_id {pad}, eos_token_id {eos} and <unk> {unk} "
                                "must be three different tokens")
    order = [pad, unk, start, eos] + [i for i in range(size) if i not in (pad, unk, eos)]
    pieces = [by_id[i] for i in order]
    pieces[BOS] = SPECIALS[BOS] if SPECIALS[BOS] not in vocab else "<seq2seq:bos>"  # a piece no text gives
    return order, pieces


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / "model.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise MarianImportError(f"{path}: not a readable safetensors file ({e})") from None
    path = folder / "pytorch_model.bin"
    if path.is_file():
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # torch.load raises many kinds for a damaged or foreign file
            raise MarianImportError(f"{path}: not a readable PyTorch weights file ({e})") from None
    raise MarianImportError(f"{folder}: has neither model.safetensors nor pytorch_model.bin")


def marian_positions(n: int, d: int) -> torch.Tensor:
    """transformers' MarianSinusoidalPositionalEmbedding table: row p holds sin(p * f_j) for
    j < d/2, then cos(p * f_j), f_j = 10000 ** (-2j / d), in float64 rounded to float32."""
    rate = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    table = np.zeros((n, d))
    half = d // 2 + d % 2
    table[:, :half] = np.sin(rate[:, 0::2])
    table[:, half:] = np.cos(rate[:, 1::2])
    return torch.tensor(table, dtype=torch.float32)


def tensors(hf_weights: dict[str, torch.Tensor], cfg: ModelConfig, order: list[int], where: Path):
    """The export's tensors under seq2seq/models.py's names."""
    w = {k.removeprefix("model."): v for k, v in hf_weights.items()}
    used = set()

    def get(name, shape):
        used.add(name)
        if name not in w:
            raise MarianImportError(f"{where}: lacks tensor {name!r}; the weights and config.json come from "
                                    "different models")
        t = w[name]
        if tuple(t.shape) != tuple(shape):
            raise MarianImportError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, config.json implies "
                                    f"{tuple(shape)}")
        t = t.float()
        if not torch.isfinite(t).all():
            raise MarianImportError(f"{where}: tensor {name!r} holds NaN or infinite values")
        return t

    d, v = cfg.d_model, cfg.src_vocab - 1
    index = torch.tensor(order)
    shared = get("shared.weight", (v, d)) if "shared.weight" in w else get("encoder.embed_tokens.weight", (v, d))
    out = {"src_embed.weight": shared[index], "tgt_embed.weight": get("decoder.embed_tokens.weight", (v, d))[index]
           if "decoder.embed_tokens.weight" in w else shared[index]}
    positions = (get("encoder.embed_positions.weight", (cfg.max_positions, d))
                 if "encoder.embed_positions.weight" in w else marian_positions(cfg.max_positions, d))
    out["pos.weight"] = positions

    def linear(ours, theirs, rows, cols):
        out[f"{ours}.weight"] = get(f"{theirs}.weight", (rows, cols))
        out[f"{ours}.bias"] = get(f"{theirs}.bias", (rows,))

    def norm(ours, theirs):
        out[f"{ours}.weight"] = get(f"{theirs}.weight", (d,))
        out[f"{ours}.bias"] = get(f"{theirs}.bias", (d,))

    def attention(ours, theirs):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{ours}.{proj}", f"{theirs}.{proj}", d, d)

    def feed_forward(ours, theirs):
        linear(f"{ours}.ff.0", f"{theirs}.fc1", cfg.ff_dim, d)
        linear(f"{ours}.ff.3", f"{theirs}.fc2", d, cfg.ff_dim)

    for i in range(cfg.enc_layers):
        p, q = f"enc.{i}", f"encoder.layers.{i}"
        attention(f"{p}.attn", f"{q}.self_attn")
        norm(f"{p}.sub1.norm", f"{q}.self_attn_layer_norm")
        feed_forward(p, q)
        norm(f"{p}.sub2.norm", f"{q}.final_layer_norm")
    for i in range(cfg.dec_layers):
        p, q = f"dec.{i}", f"decoder.layers.{i}"
        attention(f"{p}.self_attn", f"{q}.self_attn")
        norm(f"{p}.subs.0.norm", f"{q}.self_attn_layer_norm")
        attention(f"{p}.cross_attn", f"{q}.encoder_attn")
        norm(f"{p}.subs.1.norm", f"{q}.encoder_attn_layer_norm")
        feed_forward(p, q)
        norm(f"{p}.subs.2.norm", f"{q}.final_layer_norm")
    if cfg.tie_embeddings:
        out["out.weight"] = out["tgt_embed.weight"]
    else:
        out["out.weight"] = get("lm_head.weight", (v, d))[index]
    bias = get("final_logits_bias", (1, v))[0][index] if "final_logits_bias" in w else torch.zeros(v)
    bias[BOS] = NEVER_BIAS
    out["out.bias"] = bias
    # Copies of a tensor read above (tied or shared), and the positions transformers computes.
    repeats = {"shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight",
               "encoder.embed_positions.weight", "decoder.embed_positions.weight"}
    unknown = sorted(set(w) - used - repeats)
    if unknown:
        raise MarianImportError(f"{where}: holds tensor(s) {unknown[:5]}, which a Marian model of its config.json "
                                "does not have (another architecture, or options this import does not read); "
                                "without them the model would not be the same")
    return out


def decoding_defaults(hf: dict, where: Path) -> dict:
    """DecodingOptions fields for Hugging Face generate()'s settings in the config (and its
    defaults where the config sets none); docs/marian.md gives the correspondence."""
    beams = hf.get("num_beams", 1)
    penalty = hf.get("length_penalty", 1.0)
    if penalty not in (0, 1):
        raise MarianImportError(f"{where}: length_penalty {json.dumps(penalty)} has no equal here: the engine "
                                "divides scores by the length (1.0, \"average\") or not at all (0.0, \"none\")")
    max_length = hf.get("max_length", 20)
    # generate()'s max_length counts the decoder's start token, and a forced </s> takes the last place.
    longest = max_length - (2 if hf.get("forced_eos_token_id") is not None else 1)
    if longest < 1:
        raise MarianImportError(f"{where}: max_length {max_length} leaves no room for a token")
    return {"beam_size": beams, "length_penalty": "average" if penalty else "none",
            # True: generate() stops a sentence once num_beams hypotheses have ended, as ours does;
            # its default False is a heuristic between that and "never" (search to the end),
            # and stopping at num_beams is the nearer rule (CTranslate2's, too).
            "early_stop": hf.get("early_stopping", False) != "never",
            "max_length": longest, "max_length_ratio": 0.0, "min_length": max(0, hf.get("min_length", 0) - 1),
            "no_repeat_ngram_size": hf.get("no_repeat_ngram_size", 0)}


def import_marian(folder: str | Path, out: str | Path) -> Path:
    """Write the export of the Marian directory ``folder`` to ``out``."""
    from safetensors.torch import save_file

    from seq2seq.export import CONFIG, FORMAT_VERSION, SPECIAL_IDS, WEIGHTS, check_decoding

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise MarianImportError(f"{folder}: not a directory; pass a Marian model directory (config.json, "
                                "model.safetensors, source.spm, target.spm, vocab.json)")
    hf = read_config(folder)
    cfg = model_config(hf, folder / "config.json")
    order, pieces = vocabulary(folder, hf)
    weights = tensors(read_weights(folder), cfg, order, folder)
    decoding = decoding_defaults(hf, folder / "config.json")
    try:
        check_decoding(decoding, "the decoding defaults")
    except ValueError as e:
        raise MarianImportError(f"{folder / 'config.json'}: generate()'s settings give {e}") from None
    tok_cfg = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    if tok_cfg.get("separate_vocabs"):
        raise MarianImportError(f"{folder / 'tokenizer_config.json'}: separate_vocabs is true; the import reads one "
                                "vocabulary shared by both sides")
    sides = []
    for name in ("source.spm", "target.spm"):
        path = folder / name
        if not path.is_file():
            raise MarianImportError(f"{path}: not found; a Marian directory holds source.spm and target.spm")
        try:
            sides.append(SentencePieceTokenizer(path.read_bytes(), pieces))
        except (RuntimeError, OSError) as e:
            raise MarianImportError(f"{path}: not a SentencePiece model ({e})") from None
    data = DataConfig(corpus="", src=str(tok_cfg.get("source_lang", "")), tgt=str(tok_cfg.get("target_lang", "")),
                      task="translation", tokenizer="sentencepiece", joint_vocab=False, vocab_size=len(pieces))
    config = {"format_version": FORMAT_VERSION, "family": "transformer", "task": "translation",
              "model": asdict(cfg), "data": asdict(data), "special_ids": SPECIAL_IDS,
              "source": {"marian": str(folder.resolve()), "transformers_version": hf.get("transformers_version")},
              "decoding": decoding}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in weights.items()}, str(out / WEIGHTS),
              metadata={"format_version": str(FORMAT_VERSION)})
    PairTokenizer(*sides).save(out)
    (out / CONFIG).write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
