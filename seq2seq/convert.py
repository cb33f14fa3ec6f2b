"""A Transformer export as a CTranslate2 model, and decoding with it.

    seq2seq convert --to ctranslate2 exports/demo ct2/demo [--quantization int8]

``convert_to_ctranslate2`` writes a CTranslate2 model directory (CTranslate2's own files
plus ``seq2seq.json``); ``CTranslate2Decoder`` decodes with it under the project's
DecodingOptions and returns the reference decoder's Hypothesis objects.

What the conversion keeps, because CTranslate2's defaults differ from this project's:
- The position table is stored explicitly, the learned one or the project's sinusoids:
  CTranslate2's built-in sinusoidal table orders sines and cosines differently.
- Vocabulary entry i is token id i on both sides (made-up unique strings where a
  tokenizer has no distinct surface form), so ids map to strings and back exactly.
- <bos> starts the decoder and <eos> is appended to every source (``add_source_eos``), as
  in the project's data pipeline; LayerNorm epsilon is 1e-5 (torch's default).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from seq2seq.config import DecodingOptions, validate_decoding_options
from seq2seq.data.tokenizers import BOS, EOS, PAD, SPECIALS, UNK
from seq2seq.decoding import Hypothesis, length_limits, length_penalty
from seq2seq.export import Export, ExportError, load_export

CTRANSLATE2_VERSION = "4.6.2"
QUANTIZATIONS = ("float32", "int8")
METADATA = "seq2seq.json"  # written beside CTranslate2's files: marks a conversion of ours
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which every LayerNorm in models.py uses
PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = (SPECIALS[i] for i in (PAD, UNK, BOS, EOS))
# CTranslate2's length_penalty divides a finished hypothesis's score by length ** value,
# its length counting the final <eos> (as the project's L does).
CT2_LENGTH_PENALTY = {"none": 0.0, "average": 1.0}


def require_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise ImportError(f"the CTranslate2 converter and decoder need the ctranslate2 package: "
                          f"pip install ctranslate2=={CTRANSLATE2_VERSION}") from None
    return ctranslate2


# ---------------------------------------------------------------------------------------
# Conversion


def vocabulary_tokens(tokenizer, size: int) -> list[str]:
    """One unique string per id, 0..size-1: the tokenizer's pieces, the special tokens at
    their fixed ids, and ``<seq2seq:id>`` for a piece that is empty or already taken (two
    equal strings would map to one id in CTranslate2)."""
    pieces = tokenizer.id_pieces(list(range(size)))
    pieces[: len(SPECIALS)] = SPECIALS
    tokens, seen = [], set()
    for i, piece in enumerate(pieces):
        if not piece or piece in seen:
            piece = f"<seq2seq:{i}>"
            while piece in seen:
                piece = "_" + piece
        seen.add(piece)
        tokens.append(piece)
    return tokens


def position_table(exp: Export):
    """(max_positions, d_model): the table models.Transformer adds to the scaled embeddings."""
    from seq2seq.models import sinusoidal_positions

    cfg = exp.model_cfg
    if cfg.positions == "learned":
        return exp.tensors["pos.weight"].numpy()
    return sinusoidal_positions(cfg.max_positions, cfg.d_model).numpy()


def transformer_spec(exp: Export):
    """The CTranslate2 TransformerSpec of a Transformer export, weights and vocabularies set."""
    require_ctranslate2()
    from ctranslate2.specs import TransformerSpec, common_spec

    cfg = exp.model_cfg
    t = {name: tensor.numpy() for name, tensor in exp.tensors.items()}
    pre_norm = cfg.norm == "pre"
    spec = TransformerSpec.from_config((cfg.enc_layers, cfg.dec_layers), cfg.heads, pre_norm=pre_norm,
                                       activation=common_spec.Activation.RELU)
    spec.config.layer_norm_epsilon = LAYER_NORM_EPS
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = UNK_TOKEN, BOS_TOKEN, EOS_TOKEN
    spec.config.decoder_start_token = BOS_TOKEN
    spec.config.add_source_eos = True

    def linear(layer, prefix):
        layer.weight, layer.bias = t[f"{prefix}.weight"], t[f"{prefix}.bias"]

    def fused(layer, prefixes):
        layer.weight = np.concatenate([t[f"{p}.weight"] for p in prefixes])
        layer.bias = np.concatenate([t[f"{p}.bias"] for p in prefixes])

    def norm(layer, prefix):
        layer.gamma, layer.beta = t[f"{prefix}.weight"], t[f"{prefix}.bias"]

    def feed_forward(layer, prefix, norm_prefix):
        linear(layer.linear_0, f"{prefix}.0")  # FeedForward: Linear, ReLU, Dropout, Linear, Dropout
        linear(layer.linear_1, f"{prefix}.3")
        norm(layer.layer_norm, norm_prefix)

    positions = position_table(exp)
    spec.encoder.embeddings[0].weight = t["src_embed.weight"]
    spec.encoder.position_encodings.encodings = positions
    for i, layer in enumerate(spec.encoder.layer):
        p = f"enc.{i}"
        fused(layer.self_attention.linear[0], [f"{p}.attn.{x}_proj" for x in "qkv"])
        linear(layer.self_attention.linear[1], f"{p}.attn.out_proj")
        norm(layer.self_attention.layer_norm, f"{p}.sub1.norm")
        feed_forward(layer.ffn, f"{p}.ff", f"{p}.sub2.norm")

    spec.decoder.embeddings.weight = t["tgt_embed.weight"]
    spec.decoder.position_encodings.encodings = positions
    for i, layer in enumerate(spec.decoder.layer):
        p = f"dec.{i}"
        fused(layer.self_attention.linear[0], [f"{p}.self_attn.{x}_proj" for x in "qkv"])
        linear(layer.self_attention.linear[1], f"{p}.self_attn.out_proj")
        norm(layer.self_attention.layer_norm, f"{p}.subs.0.norm")
        linear(layer.attention.linear[0], f"{p}.cross_attn.q_proj")
        fused(layer.attention.linear[1], [f"{p}.cross_attn.{x}_proj" for x in "kv"])
        linear(layer.attention.linear[2], f"{p}.cross_attn.out_proj")
        norm(layer.attention.layer_norm, f"{p}.subs.1.norm")
        feed_forward(layer.ffn, f"{p}.ff", f"{p}.subs.2.norm")

    if pre_norm:  # post-norm stacks end in a sublayer's norm and have no final one
        norm(spec.encoder.layer_norm, "enc_norm")
        norm(spec.decoder.layer_norm, "dec_norm")
    linear(spec.decoder.projection, "out")
    if cfg.tie_embeddings:  # one array: CTranslate2 stores it once and aliases the other
        spec.decoder.projection.weight = spec.decoder.embeddings.weight

    spec.register_source_vocabulary(vocabulary_tokens(exp.tokenizer.src, cfg.src_vocab))
    spec.register_target_vocabulary(vocabulary_tokens(exp.tokenizer.tgt, cfg.tgt_vocab))
    return spec


def check_out_dir(out: Path) -> None:
    """Refuse to replace a folder that is not one of our earlier conversions."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory; choose a new output folder")
    if out.is_dir() and any(out.iterdir()) and not (out / METADATA).is_file():
        raise ValueError(f"{out}: exists, is not empty and holds no earlier conversion ({METADATA}); "
                         "choose a new or empty output folder")


def convert_to_ctranslate2(export_dir: str | Path, out_dir: str | Path, quantization: str = "float32") -> Path:
    """Write a CTranslate2 model of a Transformer export to ``out_dir`` (replacing an
    earlier conversion there) and return its path."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not supported; choose one of {', '.join(QUANTIZATIONS)}")
    exp = load_export(export_dir)
    if exp.model_cfg.family != "transformer":
        raise ExportError(f"{exp.path}: a {exp.model_cfg.family!r} model cannot be converted; CTranslate2 runs only "
                          "the 'transformer' family (it has no RNN encoder-decoders)")
    if exp.model_cfg.copy:
        raise ExportError(f"{exp.path}: a Transformer with the copy mechanism (model.copy) cannot be converted; "
                          "CTranslate2 has no pointer-generator, so decode it with the engine (seq2seq translate)")
    out = Path(out_dir)
    check_out_dir(out)
    ctranslate2 = require_ctranslate2()
    spec = transformer_spec(exp)

    class ExportConverter(ctranslate2.converters.Converter):
        def _load(self):
            return spec

    ExportConverter().convert(str(out), quantization=quantization, force=True)
    cfg = exp.model_cfg
    metadata = {"converted_from": str(exp.path), "family": cfg.family, "quantization": quantization,
                "max_positions": cfg.max_positions, "src_vocab": cfg.src_vocab, "tgt_vocab": cfg.tgt_vocab,
                "ctranslate2_version": ctranslate2.__version__}
    (out / METADATA).write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------
# Decoding


def convert_marian_to_ctranslate2(export_dir: str | Path, out_dir: str | Path, quantization: str = "float32") -> Path:
    """CTranslate2's own conversion (its TransformersConverter) of the Marian directory that
    ``seq2seq import marian`` made the export from, so that the engine is measured against
    CTranslate2 as OPUS-MT users run it. The source's </s> is appended by CTranslate2
    (add_source_eos), and seq2seq.json lists the token of each of the export's ids: the
    Marian pieces CTranslate2's vocabulary holds under its own ids."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not supported; choose one of {', '.join(QUANTIZATIONS)}")
    exp = load_export(export_dir)
    folder = exp.config.get("source", {}).get("marian")
    if not folder or not Path(folder, "config.json").is_file():
        raise ExportError(f"{exp.path}: not imported from a Marian directory that is still there (its config.json "
                          f"\"source\" names {folder!r}); CTranslate2 converts Marian models from that directory")
    out = Path(out_dir)
    check_out_dir(out)
    ctranslate2 = require_ctranslate2()
    ctranslate2.converters.TransformersConverter(folder).convert(str(out), quantization=quantization, force=True)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config["add_source_eos"] = True
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    cfg = exp.model_cfg
    metadata = {"converted_from": folder, "family": cfg.family, "quantization": quantization,
                "max_positions": cfg.max_positions, "src_vocab": cfg.src_vocab, "tgt_vocab": cfg.tgt_vocab,
                "ctranslate2_version": ctranslate2.__version__, "tokens": exp.tokenizer.tgt.vocab}
    (out / METADATA).write_text(json.dumps(metadata, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def read_vocabularies(model_dir: Path) -> tuple[list[str], list[str]]:
    """(source tokens, target tokens) by our token id: seq2seq.json's list for a Marian
    conversion, else CTranslate2's vocabulary files, whose ids are ours."""
    tokens = read_metadata(model_dir).get("tokens")
    if tokens:
        return tokens, tokens
    return read_vocabularies_files(model_dir)


def read_vocabularies_files(model_dir: Path) -> tuple[list[str], list[str]]:
    """(source tokens, target tokens) by CTranslate2's ids."""
    def read(name):
        return json.loads((model_dir / f"{name}_vocabulary.json").read_text(encoding="utf-8"))

    if (model_dir / "shared_vocabulary.json").is_file():
        shared = read("shared")
        return shared, shared
    return read("source"), read("target")


def read_metadata(model_dir: Path) -> dict:
    path = model_dir / METADATA
    again = "convert the export again with `seq2seq convert --to ctranslate2 EXPORT_DIR OUT_DIR`"
    if not path.is_file():
        raise ValueError(f"{model_dir}: no {METADATA}, so not a conversion of a seq2seq export; {again}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); {again}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("max_positions"), int):
        raise ValueError(f"{path}: has no integer \"max_positions\"; {again}")
    return meta


def unsupported(opts: DecodingOptions) -> str | None:
    """Why CTranslate2 cannot search as ``opts`` asks, or None."""
    beam = opts.beam_size > 1
    if beam and opts.length_penalty == "gnmt":
        return ("DecodingOptions.length_penalty='gnmt' has no CTranslate2 equivalent in beam search: CTranslate2 "
                "divides by length ** alpha, GNMT by ((5 + length) / 6) ** alpha, which ranks hypotheses "
                "differently; use length_penalty 'none' or 'average' (or beam_size 1)")
    if beam and (opts.min_length or opts.min_length_ratio):
        return ("DecodingOptions.min_length/min_length_ratio have no CTranslate2 equivalent in beam search: "
                "CTranslate2 renormalizes each step's probabilities after holding <eos> back, which ranks beams "
                "differently from the reference; use min_length=0 and min_length_ratio=0 (or beam_size 1)")
    if beam and not opts.early_stop:
        return ("DecodingOptions.early_stop=False has no CTranslate2 equivalent: CTranslate2 ends a sentence's "
                "beam search once beam_size hypotheses have ended; use early_stop=True")
    if opts.no_repeat_ngram_size:
        return ("DecodingOptions.no_repeat_ngram_size is not passed to CTranslate2: its no_repeat_ngram_size "
                "renormalizes each step's probabilities over the tokens left, which ranks beams and scores "
                "hypotheses differently from the reference; use no_repeat_ngram_size=0")
    if opts.return_attention:
        return ("DecodingOptions.return_attention=True is not supported by the CTranslate2 decoder: its attention "
                "is not the reference's per-head last-layer attention; use the Python reference decoder")
    return None


class CTranslate2Decoder:
    """Decodes token ids with a model written by ``convert_to_ctranslate2``.

    The search maps onto CTranslate2's translate_batch: beam_size, the per-sentence
    maximum length and, in greedy search, minimum length (one call per distinct pair of
    limits, since CTranslate2 takes one value per call), <pad> and <bos> suppressed, <unk>
    allowed. Beam search asks for beam_size hypotheses and keeps the n_best of them by the
    reference's scores. Length penalties: "none" is CTranslate2's length_penalty 0,
    "average" its 1 (both divide by length ** value, the length counting <eos>); "gnmt"
    only in greedy search, whose tokens no penalty changes. Options without an exact
    CTranslate2 equivalent raise ValueError (``unsupported``).

    Scores. CTranslate2's own score is a summed log-probability (<eos> included, divided
    by length ** length_penalty), but not the reference's: it takes each step's
    log-softmax after removing the suppressed tokens (<pad>, <bos>, and <eos> below the
    minimum length), so it is renormalized over the tokens allowed, and a hypothesis cut
    at the maximum length has no <eos> where the reference forces one and counts its
    log-probability. Even a trained model gives <pad> and <bos> some 1e-4 a step, which
    adds up past 1e-3 over a sentence. So every returned hypothesis is
    scored again with CTranslate2's score_batch (teacher-forced, full softmax, <eos>
    appended): ``log_prob`` is then the reference's exactly, and ``score`` is the
    project's length_penalty of it. That pass costs about as much again as the search
    (measured on a small model: +60% in greedy, +100% in beam 5, which scores 5 hypotheses
    a sentence). ``exact_scores=False`` skips it: log_prob is then CTranslate2's score
    undone of its length division (renormalized, and without the forced <eos> of a
    hypothesis cut at the maximum length) and beam search keeps CTranslate2's n_best.

    Where the searches can still part:
    - With length_penalty "none", CTranslate2 ends a sentence once beam_size hypotheses
      have ended and its best-scoring candidate is one of them; the reference, once
      beam_size have ended. Where CTranslate2 searches on, it may find a better
      hypothesis than the reference's.
    - When a beam reaches the maximum length, CTranslate2 ends the k best candidates of
      that step without an <eos> and keeps the k best-scoring hypotheses by its own scores,
      which lack the forced <eos>; the reference extends the k best non-<eos> candidates
      by a forced <eos> and ranks everything by scores that count it. Greedy search is
      unaffected; beam search on sentences that reach their limit may differ.
    - Beams are ranked by CTranslate2's renormalized scores, so candidates within
      ~p(<pad>) + p(<bos>) of each other, or tied within float rounding, may swap.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", compute_type: str = "default",
                 intra_threads: int = 1, inter_threads: int = 1, exact_scores: bool = True):
        ctranslate2 = require_ctranslate2()
        self.exact_scores = exact_scores
        self.path = Path(model_dir)
        self.meta = read_metadata(self.path)
        self.src_tokens, self.tgt_tokens = read_vocabularies(self.path)
        self.tgt_ids = {token: i for i, token in enumerate(self.tgt_tokens)}
        # <pad> and <bos> where CTranslate2's vocabulary has them: a Marian conversion has
        # neither (its decoder starts from </s> with a zero embedding), and a token it lacks
        # would suppress <unk>.
        vocabulary = set(read_vocabularies_files(self.path)[1])
        self.suppress = [[t] for t in (PAD_TOKEN, BOS_TOKEN) if t in vocabulary]
        self.translator = ctranslate2.Translator(str(self.path), device=device, compute_type=compute_type,
                                                 intra_threads=intra_threads, inter_threads=inter_threads)

    def check_sources(self, sources: list[list[int]]) -> None:
        limit = self.meta["max_positions"]
        for i, ids in enumerate(sources):
            bad = [t for t in ids if not isinstance(t, int) or not 0 < t < len(self.src_tokens)]
            if bad:
                raise ValueError(f"source {i}: token ids {bad[:5]} are not in 1..{len(self.src_tokens) - 1} "
                                 f"(<pad>=0 is padding, which the reference model masks out)")
            if len(ids) + 1 > limit:
                raise ValueError(f"source {i}: {len(ids)} tokens and <eos> exceed the model's max_positions={limit}")

    def check_max_lengths(self, maxs: list[int]) -> None:
        # The reference feeds its forced <eos> step at position max; so does score_batch.
        limit = self.meta["max_positions"]
        for i, hi in enumerate(maxs):
            if hi + 1 > limit:
                raise ValueError(f"source {i}: up to {hi} output tokens and <eos> need {hi + 1} target positions but "
                                 f"the model has max_positions={limit}; lower DecodingOptions.max_length "
                                 "or max_length_ratio")

    def decode_ids(self, sources: list[list[int]], opts: DecodingOptions) -> list[list[Hypothesis]]:
        """The name seq2seq bench calls every backend by."""
        return self.translate_ids(sources, opts)

    def translate_ids(self, sources: list[list[int]], opts: DecodingOptions) -> list[list[Hypothesis]]:
        """The n-best hypotheses of every source (token ids without <eos>), best first."""
        validate_decoding_options(opts)
        reason = unsupported(opts)
        if reason:
            raise ValueError(reason)
        self.check_sources(sources)
        if not sources:
            return []
        mins, maxs = length_limits(torch.tensor([len(s) + 1 for s in sources]), opts)
        self.check_max_lengths(maxs)
        groups = defaultdict(list)
        for i, limits in enumerate(zip(mins, maxs)):
            groups[limits].append(i)
        results: list[list[Hypothesis]] = [[] for _ in sources]
        for (lo, hi), rows in groups.items():
            for i, hyps in zip(rows, self.translate_group([sources[i] for i in rows], lo, hi, opts)):
                results[i] = hyps
        return results

    def translate_group(self, sources: list[list[int]], lo: int, hi: int, opts: DecodingOptions):
        """Sources that share their (min, max) output lengths: one translate_batch call (and
        with exact_scores, one score_batch call)."""
        src = [[self.src_tokens[t] for t in ids] for ids in sources]
        penalty = CT2_LENGTH_PENALTY[opts.length_penalty] if opts.beam_size > 1 else 0.0
        outputs = self.translator.translate_batch(
            src, beam_size=opts.beam_size, patience=1,
            num_hypotheses=opts.beam_size if self.exact_scores else opts.n_best,  # all k, to rank them again
            length_penalty=penalty, min_decoding_length=lo, max_decoding_length=hi,
            suppress_sequences=self.suppress, return_scores=not self.exact_scores,
            max_input_length=0)  # CTranslate2 drops the final <eos> itself
        found = [(s, tokens) for s, out in enumerate(outputs) for tokens in out.hypotheses]
        if self.exact_scores:
            scored = self.translator.score_batch([src[s] for s, _ in found], [tokens for _, tokens in found],
                                                 max_input_length=0)
            # One log-probability per token and for the <eos> that score_batch appends.
            log_probs = [math.fsum(result.log_probs) for result in scored]
        else:
            # Undo the division by length ** penalty; a hypothesis of hi tokens was cut, without <eos>.
            log_probs = [score * (len(tokens) + (len(tokens) < hi)) ** penalty
                         for out in outputs for tokens, score in zip(out.hypotheses, out.scores)]
        results: list[list[Hypothesis]] = [[] for _ in sources]
        for (s, tokens), log_prob in zip(found, log_probs):
            ids = [self.tgt_ids[t] for t in tokens]
            results[s].append(Hypothesis(ids, length_penalty(log_prob, len(ids) + 1, opts), log_prob))
        return [sorted(hyps, key=lambda h: -h.score)[: opts.n_best] for hyps in results]
