"""The export format: what the C++ engine (and the Python reference) load to translate.

    seq2seq export runs/demo/best.pt exports/demo

An export directory holds
- ``config.json``: ``format_version``, the model family, every ModelConfig field, the
  data settings that shape the text (normalization, tokenizer), the special token ids, and
  optionally ``decoding``: the model's own decoding defaults (DecodingOptions fields, e.g.
  ``{"alpha": 1.5}``), which every decoder and server uses where a caller sets nothing;
- ``model.safetensors``: float32 tensors under their ``state_dict`` names;
- ``tokenizer.json`` (and ``*.model`` SentencePiece files): the tokenizer.

``load_export`` checks everything before anything is used and raises ExportError naming
the file and the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from seq2seq.config import (MODEL_DECODING_FIELDS, DataConfig, DecodingOptions, ModelConfig,
                            validate_decoding_options, validate_model_config)
from seq2seq.data import DataError, PairTokenizer
from seq2seq.data.corpora import corpus_task
from seq2seq.data.tokenizers import BOS, EOS, PAD, SPECIALS, UNK

FORMAT_VERSION = 1
SPECIAL_IDS = dict(zip(SPECIALS, (PAD, UNK, BOS, EOS)))
CONFIG, WEIGHTS = "config.json", "model.safetensors"


class ExportError(Exception):
    pass


@dataclass
class Export:
    path: Path
    model_cfg: ModelConfig
    data_cfg: DataConfig
    tensors: dict[str, torch.Tensor]
    tokenizer: PairTokenizer
    config: dict

    @property
    def decoding(self) -> dict:
        """The model's decoding defaults: DecodingOptions fields, empty when it has none."""
        return dict(self.config.get("decoding", {}))

    def model(self, device: str | torch.device = "cpu"):
        """The Python reference model with these weights, in eval mode."""
        from seq2seq.models import build_model

        model = build_model(self.model_cfg)
        model.load_state_dict(self.tensors)
        return model.to(device).eval()


def export(checkpoint: str | Path, out: str | Path, decoding: dict | None = None) -> Path:
    """Write an export directory from a training checkpoint; ``decoding`` holds the model's
    decoding defaults (DecodingOptions fields), checked before anything is written."""
    from safetensors.torch import save_file

    from seq2seq.translate import load_checkpoint

    if decoding:
        decoding = check_decoding(decoding, "the decoding defaults")
    model, tokenizer, ckpt = load_checkpoint(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "family": ckpt["model"]["family"],
        "task": corpus_task(DataConfig(**ckpt["data"])),
        "model": ckpt["model"],
        "data": ckpt["data"],
        "special_ids": SPECIAL_IDS,
        "source": {"checkpoint": str(ckpt["path"]), "epoch": (ckpt.get("progress") or {}).get("epoch"),
                   "step": (ckpt.get("progress") or {}).get("step")},
    }
    if "averaged_from" in ckpt:
        config["source"]["averaged_from"] = ckpt["averaged_from"]
    if decoding:
        config["decoding"] = decoding
    # Tied weights share storage, which safetensors refuses: every tensor gets its own copy.
    tensors = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS), metadata={"format_version": str(FORMAT_VERSION)})
    tokenizer.save(out)
    (out / CONFIG).write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


# A config field's JSON type by its dataclass type, and how an error names it: an int field
# takes no float or bool, a float one takes a whole number too, a tuple one a list of strings.
FIELD_TYPES = {"int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
               "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
               "bool": ("true or false", lambda v: isinstance(v, bool)),
               "str": ("a string", lambda v: isinstance(v, str)),
               "tuple[str, ...]": ("a list of strings", lambda v: isinstance(v, list)
                                   and all(isinstance(x, str) for x in v))}


def shown(value) -> str:
    """A JSON value as an error quotes it: short, as seq2seq-serve quotes it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 40 else text[:37] + "..."


def _config_fields(cls, values, path: Path, key: str):
    if not isinstance(values, dict):
        raise ExportError(f"{path}: \"{key}\" must be an object of {cls.__name__} fields")
    known = {f.name: f.type for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ExportError(f"{path}: \"{key}\" has unknown field(s) {unknown}; this export needs a newer seq2seq")
    for name, value in values.items():
        kind, fits = FIELD_TYPES[known[name]]
        if not fits(value):
            raise ExportError(f"{path}: \"{key}.{name}\" must be {kind}, not {shown(value)}; correct it, or export "
                              "the checkpoint again with `seq2seq export`")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**values)
    except TypeError as e:
        raise ExportError(f"{path}: \"{key}\": {e}") from None


def check_decoding(values, where: str) -> dict:
    """Decoding defaults as an export keeps them: known fields of the right JSON type, valid
    together (validate_decoding_options); ValueError naming ``where`` and the field otherwise."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be an object of DecodingOptions fields, not {shown(values)}")
    unknown = sorted(set(values) - set(MODEL_DECODING_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; a model's decoding defaults may set "
                         f"{', '.join(MODEL_DECODING_FIELDS)}")
    types = {f.name: f.type for f in fields(DecodingOptions)}
    for name, value in values.items():
        kind, fits = FIELD_TYPES[types[name]]
        if not fits(value):
            raise ValueError(f"{where}: {name} must be {kind}, not {shown(value)}")
    try:
        validate_decoding_options(DecodingOptions(**values))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return dict(values)


def decoding_defaults(path: str | Path) -> dict:
    """The decoding defaults of the export at ``path``; empty for a training checkpoint."""
    if not is_export(path):
        return {}
    return read_config(Path(path))[0].get("decoding", {})


def read_config(folder: Path) -> tuple[dict, ModelConfig, DataConfig]:
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path}: not found; an export directory (made by `seq2seq export CKPT DIR`) "
                          f"holds {CONFIG}, {WEIGHTS} and tokenizer.json") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: unreadable ({e})") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:  # json's decoder recurses once per [ or {
        raise ExportError(f"{path}: nested too deeply; an export's JSON nests a few levels: export the checkpoint "
                          "again with `seq2seq export`") from None
    if not isinstance(config, dict):
        raise ExportError(f"{path}: expected a JSON object")
    missing = [k for k in ("format_version", "family", "model", "data", "special_ids") if k not in config]
    if missing:
        raise ExportError(f"{path}: missing key(s) {missing}")
    version = config["format_version"]
    if not isinstance(version, int) or version < 1:
        raise ExportError(f"{path}: format_version must be a positive integer, not {version!r}")
    if version > FORMAT_VERSION:
        raise ExportError(f"{path}: format_version {version} is newer than this seq2seq reads ({FORMAT_VERSION}); "
                          "upgrade seq2seq or export the model again with this version")
    model_cfg = _config_fields(ModelConfig, config["model"], path, "model")
    data_cfg = _config_fields(DataConfig, config["data"], path, "data")
    try:
        validate_model_config(model_cfg)
    except ValueError as e:
        raise ExportError(f"{path}: {e}") from None
    if config["family"] != model_cfg.family:
        raise ExportError(f"{path}: \"family\" is {config['family']!r} but the model config says {model_cfg.family!r}")
    if config["special_ids"] != SPECIAL_IDS:
        raise ExportError(f"{path}: special_ids {config['special_ids']} differ from this seq2seq's {SPECIAL_IDS}")
    if "decoding" in config:
        try:
            check_decoding(config["decoding"], '"decoding"')
        except ValueError as e:
            raise ExportError(f"{path}: {e}; correct it, or export the checkpoint again with `seq2seq export`") from None
    return config, model_cfg, data_cfg


def expected_tensors(model_cfg: ModelConfig) -> dict[str, tuple[torch.Size, torch.dtype]]:
    from seq2seq.models import build_model

    with torch.device("meta"):
        model = build_model(model_cfg)
    return {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}


def read_tensors(path: Path, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ExportError(f"{path}: not found; export the checkpoint again with `seq2seq export`")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{path}: not a readable safetensors file, perhaps truncated ({e})") from None
    expected = expected_tensors(model_cfg)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ExportError(f"{path}: does not fit the model in config.json: missing tensors {missing[:5]}"
                          f"{' ...' if len(missing) > 5 else ''}, unexpected tensors {unexpected[:5]}"
                          f"{' ...' if len(unexpected) > 5 else ''}")
    for name, (shape, dtype) in expected.items():
        t = tensors[name]
        if t.shape != shape:
            raise ExportError(f"{path}: tensor {name} has shape {tuple(t.shape)}, the model needs {tuple(shape)}")
        if t.dtype != dtype:
            raise ExportError(f"{path}: tensor {name} is {t.dtype}, the model needs {dtype}")
        if not torch.isfinite(t).all():
            raise ExportError(f"{path}: tensor {name} holds NaN or infinite values")
    return tensors


def load_export(folder: str | Path) -> Export:
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder}: not a directory; pass the folder written by `seq2seq export CKPT DIR`")
    config, model_cfg, data_cfg = read_config(folder)
    tensors = read_tensors(folder / WEIGHTS, model_cfg)
    try:
        tokenizer = PairTokenizer.load(folder)
    except (DataError, OSError, KeyError, ValueError, RuntimeError) as e:
        raise ExportError(f"{folder}: tokenizer: {e}") from None
    sizes = (tokenizer.src.vocab_size, tokenizer.tgt.vocab_size)
    if sizes != (model_cfg.src_vocab, model_cfg.tgt_vocab):
        raise ExportError(f"{folder}: the tokenizer has {sizes[0]}/{sizes[1]} source/target tokens but the model "
                          f"was built for {model_cfg.src_vocab}/{model_cfg.tgt_vocab}")
    return Export(folder, model_cfg, data_cfg, tensors, tokenizer, config)


def is_export(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()

