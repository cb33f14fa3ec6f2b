"""Every hyperparameter of the project and its default, as plain dataclasses.

A checkpoint stores ``asdict(config)`` and rebuilds the config from it; nothing else in
the package defines a default for these values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass
class DataConfig:
    # Which corpus: a registered name (see `seq2seq data list`), or a user's files
    # (one TSV, or two line-aligned files, plain or .gz).
    corpus: str = "multi30k"
    files: tuple[str, ...] = ()
    src: str = ""
    tgt: str = ""
    data_dir: str = ""  # empty: $SEQ2SEQ_DATA, else ./data
    skip_bad: bool = False  # skip and count malformed TSV lines instead of failing
    # "translation", "transliteration" or "summarization"; empty: the registered corpus's
    # task (translation for a user's files). It picks the metrics `seq2seq evaluate` reports.
    task: str = ""

    # Normalization (Unicode NFC and whitespace cleanup always happen).
    lowercase: bool = False
    ascii_fold: bool = False

    # Filters on the training split, lengths in whitespace-separated words.
    min_len: int = 1
    max_len: int = 0  # 0: no maximum
    max_ratio: float = 0.0  # 0: no ratio filter
    dedup: bool = False
    # Cut training sources to their first N words before the filters (0: never), so long
    # texts still teach their opening instead of being dropped by max_len (summarization).
    # Evaluation always reads the whole text.
    truncate_source: int = 0

    # Deterministic split for corpora that have none (Tatoeba, a user's single file).
    val_size: int = 1000
    test_size: int = 1000

    # Synthetic tasks (corpus "copy", "reverse" or "sort").
    synthetic_symbols: int = 20
    synthetic_min_len: int = 3
    synthetic_max_len: int = 12
    synthetic_train_size: int = 20000
    synthetic_eval_size: int = 1000
    synthetic_seed: int = 1234

    # Tokenization.
    tokenizer: str = "sentencepiece"  # "sentencepiece" or "word"
    sp_model_type: str = "bpe"  # "bpe" or "unigram"
    joint_vocab: bool = True
    vocab_size: int = 8000
    min_freq: int = 2  # word tokenizer: rarer words become <unk>

    # Batching.
    max_tokens: int = 4096  # padded tokens per batch (0: use batch_size)
    batch_size: int = 0  # sentences per batch, when max_tokens is 0
    bucket_pool: int = 100  # sort this many batches' worth of pairs by length at a time
    shuffle_seed: int = 1


def check_choices(config: object, choices: dict[str, tuple[str, ...]]) -> None:
    """Raise ValueError naming the field when a string option is not one of its choices."""
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value not in allowed:
            raise ValueError(
                f"{type(config).__name__}.{name}={value!r} is not valid; choose one of "
                + ", ".join(repr(a) for a in allowed)
            )


# What `seq2seq evaluate` reports for each DataConfig.task (seq2seq/evaluate.py computes them).
TASK_METRICS = {
    "translation": "BLEU and chrF (sacreBLEU), sequence accuracy, BLEU by source length",
    "transliteration": "word accuracy, character error rate, NEWS mean F-score, accuracy in the 5-best (beam 5 "
                       "or more)",
    "summarization": "ROUGE-1/2/L, BLEU, the lead baseline's ROUGE",
}
EVERY_TASK_METRICS = "perplexity and token accuracy (teacher-forced)"


def validate_data_config(cfg: DataConfig) -> None:
    check_choices(cfg, {"tokenizer": ("sentencepiece", "word"), "sp_model_type": ("bpe", "unigram", "char"),
                        "task": ("",) + tuple(TASK_METRICS)})
    for name in ("min_len", "max_len", "truncate_source", "val_size", "test_size", "vocab_size", "min_freq",
                 "max_tokens", "batch_size", "bucket_pool"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"DataConfig.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.max_tokens == 0 and cfg.batch_size == 0:
        raise ValueError("set DataConfig.max_tokens (a token budget) or DataConfig.batch_size (sentences)")
    if cfg.max_len and cfg.max_len < cfg.min_len:
        raise ValueError(f"DataConfig.max_len={cfg.max_len} is below min_len={cfg.min_len}")
    if cfg.synthetic_min_len < 1 or cfg.synthetic_max_len < cfg.synthetic_min_len:
        raise ValueError("synthetic lengths need 1 <= synthetic_min_len <= synthetic_max_len")


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


@dataclass
class ModelConfig:
    # "rnn": encoder-decoder with a single fixed context vector (Sutskever/Cho);
    # "attention": an RNN decoder attending over the encoder outputs;
    # "transformer": Vaswani et al. (2017), built from its components.
    family: str = "attention"
    src_vocab: int = 0  # set from the tokenizer
    tgt_vocab: int = 0
    dropout: float = 0.2

    # RNN families.
    cell: str = "lstm"  # "lstm" or "gru"
    emb_dim: int = 256
    hidden: int = 512  # decoder size; a bidirectional encoder uses hidden/2 per direction
    layers: int = 2
    bidirectional: bool = False
    context_feed: bool = False  # rnn: feed the context vector to every decoder step (Cho et al., 2014)
    attention: str = "bahdanau"  # "bahdanau" (additive) or Luong's "dot", "general", "concat"
    attention_dim: int = 256  # additive scores (bahdanau, concat)
    input_feed: bool = True  # Luong: feed the previous attentional vector to the next step
    # attention: a pointer-generator (See et al., 2017): each step's distribution mixes the
    # vocabulary's with the attention over the source's tokens, copied as they are (one
    # vocabulary for both sides: data.joint_vocab)
    copy: bool = False

    # Transformer.
    d_model: int = 256
    heads: int = 4
    ff_dim: int = 1024
    enc_layers: int = 3
    dec_layers: int = 3
    norm: str = "pre"  # "pre" or "post" layer normalization
    positions: str = "sinusoidal"  # or "learned"
    max_positions: int = 1024
    tie_embeddings: bool = False  # share the target embedding with the output projection
    activation: str = "relu"  # the feed-forward's: "relu", "gelu" (erf) or "swish" (SiLU, OPUS-MT's)
    scale_embeddings: bool = True  # embeddings times sqrt(d_model) before the positions are added


def validate_model_config(cfg: ModelConfig) -> None:
    check_choices(cfg, {
        "family": ("rnn", "attention", "transformer"), "cell": ("lstm", "gru"),
        "attention": ("bahdanau", "dot", "general", "concat"), "norm": ("pre", "post"),
        "positions": ("sinusoidal", "learned"), "activation": ("relu", "gelu", "swish"),
    })
    if cfg.src_vocab <= 4 or cfg.tgt_vocab <= 4:
        raise ValueError("ModelConfig.src_vocab and tgt_vocab must be set from the tokenizer (more than 4 ids)")
    if cfg.bidirectional and cfg.hidden % 2:
        raise ValueError(f"ModelConfig.hidden={cfg.hidden} must be even with a bidirectional encoder")
    if cfg.d_model % cfg.heads:
        raise ValueError(f"ModelConfig.d_model={cfg.d_model} must be divisible by heads={cfg.heads}")
    if not 0 <= cfg.dropout < 1:
        raise ValueError(f"ModelConfig.dropout={cfg.dropout} must be in [0, 1)")
    if cfg.copy and cfg.family == "rnn":
        raise ValueError(f"ModelConfig.copy copies source tokens through the attention: it needs family "
                         f"\"attention\" or \"transformer\", not {cfg.family!r}")
    if cfg.copy and cfg.src_vocab != cfg.tgt_vocab:
        raise ValueError(f"ModelConfig.copy needs one vocabulary for both sides (data.joint_vocab = true), not "
                         f"{cfg.src_vocab} source and {cfg.tgt_vocab} target ids")


@dataclass
class TrainConfig:
    out_dir: str = "runs/model"
    epochs: int = 10
    max_steps: int = 0  # 0: no step limit
    seed: int = 1
    device: str = "auto"  # "auto" (CUDA when available), "cpu" or "cuda"
    bf16: bool = False  # autocast to bfloat16 on CUDA

    optimizer: str = "adam"  # "adam", "adamw" or "sgd" (the classic RNN recipes: lr 0.1-1, halved on plateau)
    momentum: float = 0.0  # sgd only
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant", "inverse_sqrt" (with warmup) or "plateau"
    warmup_steps: int = 4000
    plateau_factor: float = 0.5
    plateau_patience: int = 1
    clip_norm: float = 1.0  # 0: no clipping
    label_smoothing: float = 0.0

    teacher_forcing: float = 1.0  # starting ratio of gold inputs
    tf_schedule: str = "constant"  # "constant", "linear" or "inverse_sigmoid" decay
    tf_min: float = 0.0
    tf_decay_steps: int = 10000  # linear: steps to reach tf_min; inverse_sigmoid: its k

    early_stop_metric: str = "val_loss"  # "val_loss", "val_ppl", "val_token_acc" or "val_bleu"
    patience: int = 5  # epochs without improvement before stopping; 0: never
    keep_epochs: int = 0  # also keep the last N epochs as out_dir/epoch{N}.pt, for `seq2seq average`
    log_every: int = 50  # steps between gradient-norm records in the metrics log
    samples: int = 3  # sample translations printed after each epoch
    val_bleu: bool = True  # greedy-decode the validation split each epoch and score it with sacreBLEU
    tensorboard: bool = True  # also write TensorBoard logs to out_dir/tensorboard, where it is installed


def validate_train_config(cfg: TrainConfig) -> None:
    check_choices(cfg, {
        "device": ("auto", "cpu", "cuda"), "optimizer": ("adam", "adamw", "sgd"),
        "schedule": ("constant", "inverse_sqrt", "plateau"),
        "tf_schedule": ("constant", "linear", "inverse_sigmoid"),
        "early_stop_metric": ("val_loss", "val_ppl", "val_token_acc", "val_bleu"),
    })
    if cfg.early_stop_metric == "val_bleu" and not cfg.val_bleu:
        raise ValueError("TrainConfig.early_stop_metric='val_bleu' needs val_bleu=true")
    if cfg.lr <= 0:
        raise ValueError(f"TrainConfig.lr must be > 0, got {cfg.lr}")
    if cfg.keep_epochs < 0:
        raise ValueError(f"TrainConfig.keep_epochs must be >= 0 (0: keep none), got {cfg.keep_epochs}")
    if not 0 <= cfg.teacher_forcing <= 1 or not 0 <= cfg.tf_min <= 1:
        raise ValueError("TrainConfig.teacher_forcing and tf_min must be in [0, 1]")


@dataclass
class DecodingOptions:
    """How the reference decoder (seq2seq/decoding.py) and the C++ engine search.

    Lengths count output tokens without the final <eos>; a source's length counts its
    tokens without the <eos> the data pipeline appends. A sentence's limits are
        max = min(max_length, floor(max_length_ratio * src_len) + max_length_extra)
        min = min(max(min_length, floor(min_length_ratio * src_len)), max)
    (max_length_ratio 0 turns the relative maximum off). Before ``min`` tokens <eos> is not
    allowed; after ``max`` tokens only <eos> is. <pad> and <bos> are never produced.
    """
    beam_size: int = 5  # 1: greedy search
    n_best: int = 1  # hypotheses returned per sentence, best first (at most beam_size)
    # Applied once, when a hypothesis ends, to its summed log-probability (length L counts
    # the final <eos>): "none": score; "gnmt": score / ((5 + L) / 6) ** alpha (Wu et al.,
    # 2016); "average": score / L.
    length_penalty: str = "gnmt"
    alpha: float = 0.6
    min_length: int = 0
    min_length_ratio: float = 0.0
    max_length: int = 256
    max_length_ratio: float = 2.0
    max_length_extra: int = 10
    # True: a sentence stops once beam_size hypotheses have ended; False: search goes on
    # to the maximum length and keeps every hypothesis that ended on the way.
    early_stop: bool = True
    # N > 0: no hypothesis holds the same N consecutive output tokens twice (a token that
    # would repeat one is not a candidate; scores are not renormalized); 0: no rule.
    no_repeat_ngram_size: int = 0
    return_attention: bool = False


# The options an export may carry as its model's defaults (`seq2seq export --alpha 1.5 ...`):
# every one but return_attention, which is a question of the caller's, not of the model.
MODEL_DECODING_FIELDS = tuple(f.name for f in fields(DecodingOptions) if f.name != "return_attention")

MAX_BEAM = 256  # beams beyond this only cost memory: a clear error rather than an allocation failure


def validate_decoding_options(opts: DecodingOptions) -> None:
    """The C++ engine's validate_options gives the same messages (tests/test_engine.py)."""
    check_choices(opts, {"length_penalty": ("none", "gnmt", "average")})
    if opts.beam_size < 1:
        raise ValueError(f"DecodingOptions.beam_size must be >= 1, got {opts.beam_size}")
    if opts.beam_size > MAX_BEAM:
        raise ValueError(f"DecodingOptions.beam_size must be <= {MAX_BEAM}, got {opts.beam_size}")
    if not 1 <= opts.n_best <= opts.beam_size:
        raise ValueError(f"DecodingOptions.n_best={opts.n_best} must be between 1 and beam_size={opts.beam_size}")
    for name in ("min_length", "min_length_ratio", "max_length_ratio", "max_length_extra", "alpha",
                 "no_repeat_ngram_size"):
        value = getattr(opts, name)
        if value < 0:
            raise ValueError(f"DecodingOptions.{name} must be >= 0, got {value}")
        if not math.isfinite(value):
            raise ValueError(f"DecodingOptions.{name} must be a finite number, got {value}")
    if opts.max_length < 1:
        raise ValueError(f"DecodingOptions.max_length must be >= 1, got {opts.max_length}")
