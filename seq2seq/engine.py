"""The C++ engine (seq2seq._C) on an export directory.

    engine = Engine("exports/demo", threads=2)
    engine.translate(["Il fait beau."], DecodingOptions(beam_size=5))[0][0].text
    engine.translate_ids([[57, 912, 6]], DecodingOptions(beam_size=1))   # token ids, no <eos>

The engine follows the rules of seq2seq/decoding.py and gives the same tokens as the Python
reference; the whole decoding call runs in C++ with the GIL released, so one Engine may be
shared by many threads.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from seq2seq.config import DecodingOptions, validate_decoding_options
from seq2seq.decoding import Hypothesis
from seq2seq.export import ExportError, load_export
from seq2seq.translate import TextTranslator

COMPUTE_TYPES = ("float32", "int8", "bfloat16")
SUPPORTED_FAMILIES = ("rnn", "attention", "transformer")


def decoder_step_matrix(name: str, tensor) -> bool:
    """Whether a state_dict tensor is a matrix the decoder multiplies by at every step (what a
    greedy step of one sentence reads from memory). Embedding tables are lookups; the
    encoder, the source-side key projections (RNN attention and the Transformer's
    cross-attention keys/values) run once per sentence. The copy gate has one output, which
    weighs every token of the step."""
    if tensor.dim() != 2 or "embed" in name or name == "pos.weight" or name.startswith("copy_gate."):
        return False
    if name.startswith(("encoder.", "enc.")) or "key_proj" in name:
        return False
    return not (".cross_attn.k_proj" in name or ".cross_attn.v_proj" in name)


def converted_matrix(family: str, name: str, tensor) -> bool:
    """Whether the compute types int8 and bfloat16 convert a state_dict tensor
    (csrc/layers/dense.h): the decoder's step matrices, and in the Transformer also its
    encoder's and the cross-attention keys/values (the RNN encoders stay float32). The copy
    gate stays float32."""
    if family == "transformer" and tensor.dim() == 2 and (
            name.startswith("enc.") or ".cross_attn.k_proj" in name or ".cross_attn.v_proj" in name):
        return True
    return decoder_step_matrix(name, tensor)


def extension():
    """The compiled module, with a message that says how to build it when it is missing."""
    try:
        from seq2seq import _C, ops  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the C++ engine (seq2seq._C) is not built ({e}); build it with `make setup` "
                          "or `pip install --no-build-isolation -e .`") from None
    return _C


def build_summary() -> str:
    """Which CPU, which instruction sets torch runs at, and which engine build: numbers that
    differ by CPU are read against this line (make test prints it)."""
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), "unknown") if cpuinfo.exists() else "unknown"
    try:
        _C = extension()
        engine = (f"engine {_C.__file__} (built for {_C.BUILD_ARCH}, CUDA kernels {'in' if _C.CUDA_KERNELS else 'not'} "
                  f"built), int8 activations of {_C.int8_activation_bits()} bits")
    except ImportError as e:
        engine = str(e)
    return f"CPU {cpu}; torch {torch.__version__}, ATen CPU capability {torch.backends.cpu.get_cpu_capability()}; {engine}"


class Engine(TextTranslator):
    def __init__(self, export_dir: str | Path, device: str = "cpu", threads: int = 0,
                 compute_type: str = "float32", max_source_tokens: int = 1024, ops: str = "device"):
        """ops: "device" runs the device's own kernels; "reference" the ops' ATen implementations
        (csrc/ops/reference.cpp, what a device without kernels runs), which give the same tokens."""
        if compute_type not in COMPUTE_TYPES:
            raise ValueError(f"compute_type {compute_type!r} is not available; choose from {COMPUTE_TYPES}")
        if not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be an integer >= 0 (0: torch's default), not {threads!r}")
        if max_source_tokens < 1:
            raise ValueError(f"max_source_tokens must be at least 1, not {max_source_tokens}")
        exp = load_export(export_dir)
        cfg = exp.model_cfg
        if cfg.family not in SUPPORTED_FAMILIES:
            raise ExportError(f"{exp.path}: the C++ engine runs {' and '.join(SUPPORTED_FAMILIES)} models; "
                              f"this is a {cfg.family} model: translate it with the Python reference "
                              "(seq2seq translate --model DIR, or --backend python)")
        # The engine reads the weights itself: the Python copy goes first (0.5 GB at OPUS-MT's
        # size), so that the engine's load hands its memory back too, and is read again if
        # `model` is asked for.
        self.parameters = sum(t.numel() for t in exp.tensors.values())
        exp.tensors = None
        try:
            self._engine = extension().Engine(str(exp.path), threads, compute_type, ops, str(device))
        except (ValueError, RuntimeError) as e:
            raise ExportError(f"{exp.path}: {e}") from None
        self.export, self.model_cfg, self.data_cfg, self.tokenizer = exp, cfg, exp.data_cfg, exp.tokenizer
        self.compute_type, self.threads, self.max_source_tokens = compute_type, threads, max_source_tokens
        self.device = torch.device(self._engine.device)
        self.checkpoint = {"path": str(exp.path)}
        self._model = None

    @property
    def model(self):
        """The Python model of the same weights, for what decoding does not give: perplexity."""
        if self._model is None:
            if not self.export.path.is_dir():
                raise ExportError(f"{self.export.path}: gone since the engine loaded it; the Python model (for "
                                  "perplexity) is read from the export when first asked for, so keep it in place")
            self._model = load_export(self.export.path).model()
        return self._model

    def translate_ids(self, sources, opts: DecodingOptions = DecodingOptions()) -> list[list[Hypothesis]]:
        """n-best hypotheses for sources given as lists (or 1-d integer tensors) of token ids,
        without <eos>."""
        validate_decoding_options(opts)
        ids = []
        for i, seq in enumerate(sources):
            if isinstance(seq, torch.Tensor):
                if seq.dim() != 1 or seq.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                    raise ValueError(f"sentence {i + 1}: a tensor of token ids must be 1-d and of an integer "
                                     f"dtype, not {seq.dim()}-d {seq.dtype}")
                seq = seq.tolist()
            elif not isinstance(seq, (list, tuple)) or not all(isinstance(t, int) for t in seq):
                raise ValueError(f"sentence {i + 1}: expected a list of integer token ids")
            if len(seq) > self.source_limit():
                raise ValueError(f"sentence {i + 1} has {len(seq)} tokens; this engine reads at most "
                                 f"{self.source_limit()} (max_source_tokens)")
            ids.append(list(seq))
        return self.decode_ids(ids, opts)

    def decode_ids(self, sources: list[list[int]], opts: DecodingOptions,
                   abandoned: torch.Tensor | None = None) -> list[list[Hypothesis]]:
        """``abandoned``: a bool flag per sentence that other threads may set while the search
        runs; a sentence whose flag is set stops at the next step, and its result is empty."""
        try:
            results = self._engine.translate(sources, engine_options(opts), abandoned)
        except (ValueError, TypeError) as e:
            raise ValueError(str(e)) from None
        return from_engine(results)

    @property
    def native(self):
        """The seq2seq._C.Engine: what seq2seq._C.Batcher runs without the GIL."""
        return self._engine


def engine_options(opts: DecodingOptions):
    """The engine's DecodeOptions with the same fields."""
    options = extension().DecodeOptions()
    for f in fields(DecodingOptions):
        setattr(options, f.name, getattr(opts, f.name))
    return options


def python_options(options) -> DecodingOptions:
    """The engine's DecodeOptions back as DecodingOptions."""
    return DecodingOptions(**{f.name: getattr(options, f.name) for f in fields(DecodingOptions)})


def from_engine(results) -> list[list[Hypothesis]]:
    """The engine's hypotheses (seq2seq._C.Hypothesis) as seq2seq.decoding.Hypothesis."""
    return [[Hypothesis(list(h.tokens), h.score, h.log_prob, h.attention) for h in hyps] for hyps in results]
