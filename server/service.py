"""The TranslationService: validation, batching, evaluation jobs."""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from seq2seq.config import DecodingOptions
from seq2seq.engine import engine_options, extension, from_engine
from .metrics import Metrics
from .protos import load

pb, pb_grpc = load()
_C = extension()
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TranslationService"].full_name
log = logging.getLogger("seq2seq.server")


@dataclass
class Limits:
    max_chars: int = 2000  # per sentence
    max_tokens: int = 256  # source tokens per sentence
    max_sentences: int = 256  # per request
    max_beam: int = 32
    max_length: int = 512
    max_evaluate: int = 20000  # sentences of one Evaluate job
    # The engine steps a request may cost: sentences x beam x the longest output each may reach.
    # 8 sentences of 250 tokens at beam 32 (130,560) held a worker for 25 s on two cores, as reported.
    max_cost: int = 65536


@dataclass
class Model:
    name: str
    path: str
    translator: object  # Engine, or the Python Translator for families the engine does not run
    backend: str
    batcher: object = None  # seq2seq._C.Batcher (csrc/batcher.h), the one seq2seq-serve uses
    decoding: dict = field(default_factory=dict)  # the export's decoding defaults (seq2seq export --alpha ...)
    _python: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    token_bytes: int = field(init=False)  # the most bytes one target token adds to a text

    def __post_init__(self):
        tgt = self.translator.tokenizer.tgt  # a token's piece alone, and the space before it
        self.token_bytes = 1 + max(len(tgt.decode([i]).encode()) for i in range(tgt.vocab_size))

    def python(self):
        """The Python reference decoder on the same export, loaded on first use."""
        if self.backend == "python":
            return self.translator
        with self._lock:
            if self._python is None:
                from seq2seq.translate import Translator

                self._python = Translator(self.path)
            return self._python

    def info(self):
        t = self.translator
        params = t.parameters if hasattr(t, "parameters") else sum(p.numel() for p in t.model.parameters())
        return pb.ModelInfo(name=self.name, family=t.model_cfg.family, source_language=t.data_cfg.src or "",
                            target_language=t.data_cfg.tgt or "", source_vocabulary=t.model_cfg.src_vocab,
                            target_vocabulary=t.model_cfg.tgt_vocab,
                            compute_type=getattr(t, "compute_type", "float32"), parameters=params,
                            backend=self.backend, task=self.task, defaults=self.default_options())

    def default_options(self):
        """What a request that sets no option gets: the export's defaults, else the server's."""
        opts = DecodingOptions(**self.decoding)
        return pb.DecodingOptions(beam_size=opts.beam_size, n_best=opts.n_best, max_length=opts.max_length,
                                  length_penalty=opts.length_penalty, alpha=opts.alpha)

    @property
    def task(self) -> str:
        from seq2seq.data.corpora import corpus_task

        return corpus_task(self.translator.data_cfg)


def check_defaults_fit(name: str, decoding: dict, limits: Limits) -> None:
    """A model's decoding defaults within the server's limits, or ValueError: else every
    request that sets no option would be refused."""
    opts = DecodingOptions(**decoding)
    if opts.beam_size > limits.max_beam or opts.max_length > limits.max_length:
        raise ValueError(f"model {name!r}: its export's decoding defaults (beam_size {opts.beam_size}, max_length "
                         f"{opts.max_length}) exceed this server's limits (--max-beam {limits.max_beam}, max_length "
                         f"{limits.max_length}); raise --max-beam or export the model with smaller defaults")


def load_model(name: str, path: str, threads: int = 0, compute_type: str = "float32", device: str = "cpu") -> Model:
    from seq2seq.engine import SUPPORTED_FAMILIES, Engine
    from seq2seq.export import load_export

    exp = load_export(path)
    if exp.model_cfg.family in SUPPORTED_FAMILIES:
        return Model(name, str(path), Engine(path, device=device, threads=threads, compute_type=compute_type), "cpp",
                     decoding=exp.decoding)
    from seq2seq.translate import Translator

    log.warning(json.dumps({"event": "python_backend", "model": name, "family": exp.model_cfg.family}))
    return Model(name, str(path), Translator(path, device=device), "python", decoding=exp.decoding)


# The task metrics an Evaluate result carries by name (BackendResult.metrics).
TASK_METRICS = ("word_accuracy", "cer", "mean_f", "accuracy_at_5", "rouge1", "rouge2", "rougeL")


def unknown_character(tokenizer, text: str) -> str:
    """The first character of ``text`` a SentencePiece tokenizer spells only with byte
    pieces, quoted with its code point ("'Ж' (U+0416)"); empty when every one is known."""
    sp = getattr(tokenizer, "sp", None)
    if sp is None:
        return ""
    for ch in text:
        if any(sp.is_byte(i) for i in sp.encode(ch)):
            return f"{ch!r} (U+{ord(ch):04X})"
    return ""


class Invalid(Exception):
    """A request field is wrong: INVALID_ARGUMENT with this message."""


UNDECODABLE = object()  # a message that is not the method's request message


def never_raising(deserializer):
    """The request deserializer grpcio is given: the message, or UNDECODABLE when the bytes are
    not one (grpcio answers INTERNAL when a deserializer raises, before the handler could say
    which message was bad, and keeps memory on that path). ``message_name`` names the message."""
    def decode(data: bytes):
        try:
            return deserializer(data)
        except DecodeError:
            return UNDECODABLE
    message = getattr(deserializer, "__self__", None)
    decode.message_name = message.DESCRIPTOR.name if hasattr(message, "DESCRIPTOR") else "request"
    return decode


def decoding_options(msg, limits: Limits, defaults: dict, field_name: str = "options") -> DecodingOptions:
    """The request's options over the model's decoding defaults (``defaults``: the export's)."""
    opts = DecodingOptions(**defaults, return_attention=msg.return_attention)
    for name in ("beam_size", "n_best", "max_length", "length_penalty", "alpha"):
        if msg.HasField(name):
            opts = replace(opts, **{name: getattr(msg, name)})
    if not 1 <= opts.beam_size <= limits.max_beam:
        raise Invalid(f"{field_name}.beam_size must be within 1..{limits.max_beam}, not {opts.beam_size}")
    if not 1 <= opts.max_length <= limits.max_length:
        raise Invalid(f"{field_name}.max_length must be within 1..{limits.max_length}, not {opts.max_length}")
    if not math.isfinite(opts.alpha):
        raise Invalid(f"{field_name}.alpha must be a finite number")
    try:  # the engine's validator, as seq2seq-serve's
        extension().validate_options(engine_options(opts))
    except ValueError as e:
        raise Invalid(f"{field_name}: {e}") from None
    return opts


def check_shard(shard: int, shards: int) -> None:
    """An Evaluate job's share: shards 0 or 1 is the whole job; else shard is within 0..shards-1."""
    if shard and not shards:
        raise Invalid(f"shard {shard} given without shards (0): give shards, the number of shares of the job")
    if shards and shard >= shards:
        raise Invalid(f"shard {shard} with shards {shards}: shard must be within 0..{shards - 1}")


def response_bound(model: Model, request_id: str, ids: list[list[int]], opts: DecodingOptions) -> int:
    """The most bytes a TranslateResponse to these sentences can take: each sentence's n_best
    hypotheses of at most its maximum length (seq2seq.decoding.length_limits) in tokens of at
    most model.token_bytes, their scores, and their attention ((tokens + 1) x (source tokens
    + 1) floats), with every field's tag and length. seq2seq-serve bounds alike."""
    import torch

    from seq2seq.decoding import length_limits

    total = 16 + len(request_id.encode()) + len(model.name.encode())
    for n, tokens in zip(map(len, ids), length_limits(torch.tensor([len(s) + 1 for s in ids]), opts)[1]):
        attention = 24 + 4 * (tokens + 1) * (n + 1) if opts.return_attention else 0
        total += 8 + opts.n_best * (40 + tokens * model.token_bytes + attention)
    return total


def request_cost(ids: list[list[int]], opts: DecodingOptions) -> int:
    """What a request may cost the engine, checked before it is queued: each sentence's beam
    times the longest output its options allow (seq2seq.decoding.length_limits), summed.
    seq2seq-serve counts alike."""
    import torch

    from seq2seq.decoding import length_limits

    return sum(opts.beam_size * n for n in length_limits(torch.tensor([len(s) + 1 for s in ids]), opts)[1])


def too_costly(cost: int, sentences: int, opts: DecodingOptions, limit: int) -> str:
    return (f"the request could cost {cost} decoding steps ({sentences} sentences x beam {opts.beam_size} x up to "
            f"{opts.max_length} output tokens each, fewer for short sources), over the server's limit of {limit} "
            "(--max-request-cost); send fewer or shorter sentences, or a smaller beam_size or max_length")


def idle_stream(seconds: float) -> str:
    return (f"the stream sent no request for {seconds:g} s with nothing in flight (--stream-idle-s); open a stream "
            "when there is something to translate")


def too_big(what: str, size: int, limit: int) -> str:
    return (f"the response {what} {size} bytes, over the server's limit of {limit} (--max-message-bytes); ask for "
            "fewer sentences, a smaller n_best or max_length, or no attention")


def hypothesis(h, scores: bool):
    out = pb.Hypothesis(text=h.text)
    if scores:
        out.score, out.log_prob = h.score, h.log_prob
    if h.attention is not None:
        # A Transformer's is (rows, heads, columns): the message carries the heads' mean, an alignment.
        a = h.attention.mean(1) if h.attention.dim() == 3 else h.attention
        rows, cols = a.shape
        out.attention.CopyFrom(pb.Attention(rows=rows, columns=cols, weights=a.flatten().tolist()))
    return out


class TranslationService(pb_grpc.TranslationServiceServicer):
    def __init__(self, models: dict[str, Model], limits: Limits = Limits(), metrics: Metrics | None = None,
                 data_dir: str = "", max_message_bytes: int = 4 * 2**20, stream_idle_s: float = 60.0,
                 max_stream_pending: int = 32, background_cost: int = 4096):
        self.models, self.limits, self.data_dir = models, limits, data_dir
        self.background_cost = background_cost
        self.stream_idle_s, self.max_stream_pending = stream_idle_s, max_stream_pending
        self.max_message_bytes = max_message_bytes  # gRPC refuses to send a larger message
        self.metrics = metrics or Metrics(None)

    # -- helpers ---------------------------------------------------------------------------
    def _model(self, name: str, context) -> Model:
        if not name:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"model: this server holds {len(self.models)} models; name one of {sorted(self.models)}")
        if name not in self.models:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not loaded; loaded: {sorted(self.models)}")
        return self.models[name]

    def _encode(self, model: Model, sentences, field_name: str = "sentences") -> list[list[int]]:
        lim = self.limits
        if not sentences:
            raise Invalid(f"{field_name}: the request holds no sentences")
        if len(sentences) > lim.max_sentences:
            raise Invalid(f"{field_name}: {len(sentences)} sentences in one request; the limit is {lim.max_sentences}"
                          " (split the request)")
        return [self._encode_sentence(model, s, f"{field_name}[{i}]") for i, s in enumerate(sentences)]

    def _encode_sentence(self, model: Model, sentence: str, where: str) -> list[int]:
        """One sentence's source ids, within the per-sentence limits; ``where`` names it."""
        lim = self.limits
        if len(sentence) > lim.max_chars:
            raise Invalid(f"{where} has {len(sentence)} characters; the limit is {lim.max_chars}")
        seq = model.translator.encode(sentence)
        if not seq:
            raise Invalid(f"{where} is empty")
        max_tokens = min(lim.max_tokens, model.translator.source_limit())
        if len(seq) > max_tokens:
            raise Invalid(f"{where} has {len(seq)} tokens; the limit is {max_tokens}")
        if model.task == "transliteration":
            unknown = unknown_character(model.translator.tokenizer.src, sentence)
            if unknown:
                raise Invalid(f"{where}: {unknown} is a character this transliteration model was not trained on "
                              f"(it reads {model.translator.data_cfg.src or 'its source'} names); send the name in "
                              "the model's source script")
        return seq

    def _translate(self, request, context):
        """The TranslateResponse of one request, through the model's batcher."""
        model = self._model(request.model, context)
        try:
            opts = decoding_options(request.options, self.limits, model.decoding)
            ids = self._encode(model, request.sentences)
        except Invalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        cost = request_cost(ids, opts)
        if cost > self.limits.max_cost:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, too_costly(cost, len(ids), opts, self.limits.max_cost))
        # Refused before decoding: else gRPC would refuse to send the answer after it.
        bound = response_bound(model, request.request_id, ids, opts)
        if bound > self.max_message_bytes:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, too_big("could reach", bound, self.max_message_bytes))
        remaining = context.time_remaining()  # None, or near-infinite, when the caller set no deadline
        deadline = time.monotonic() + remaining if remaining is not None and remaining < 1e7 else None
        try:
            jobs = model.batcher.submit(ids, engine_options(opts),
                                        None if deadline is None else deadline - time.monotonic(),
                                        client=context.peer(), background=cost > self.background_cost)
        except _C.QueueFull as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        self.metrics.set_queue_depth(model.name, model.batcher.queued)
        # A cancelled call frees its place in the queue, or its rows in a running batch; so does
        # one whose deadline passes.
        context.add_callback(lambda: [job.abandon() for job in jobs])
        hyps = []
        try:
            for job in jobs:
                left = None if deadline is None else max(deadline - time.monotonic(), 0)
                hyps += from_engine(job.result(timeout=left))
        except TimeoutError:  # _C.DeadlineExpired, _C.WaitTimedOut
            for job in jobs:
                job.abandon()
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the translation was done")
        except _C.Abandoned:
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except RuntimeError as e:
            context.abort(grpc.StatusCode.INTERNAL, str(e))
        scores = request.options.return_scores
        translations = [pb.Translation(hypotheses=[hypothesis(model.translator.translation(h), scores) for h in sentence])
                        for sentence in hyps]
        response = pb.TranslateResponse(request_id=request.request_id, model=model.name, translations=translations)
        size = response.ByteSize()
        if size > self.max_message_bytes:  # the bound should make this impossible
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, too_big("is", size, self.max_message_bytes))
        return response

    # -- RPCs ------------------------------------------------------------------------------
    def Translate(self, request, context):
        with self.metrics.observe("Translate", context, request.request_id, len(request.sentences)):
            return self._translate(request, context)

    def TranslateStream(self, request_iterator, context):
        """Requests are read and translated concurrently; responses go out as they are done."""
        with self.metrics.observe("TranslateStream", context, "", 0):
            done: queue.Queue = queue.Queue()
            pending = []
            # At most max_stream_pending requests in flight: the stream's next ones wait unread
            # (as reported, one stream of 5,000 requests had grown the server to 2,049 threads).
            slots = threading.Semaphore(self.max_stream_pending)
            state, counting = {"read": time.monotonic(), "in_flight": 0}, threading.Lock()

            def run(request):
                try:
                    done.put(self._translate(request, context))
                except BaseException as e:  # context.abort raises; the stream ends with that status
                    done.put(e)
                finally:
                    with counting:
                        state["in_flight"] -= 1
                    slots.release()

            def read():
                undecodable = None  # answered after the requests before it
                try:
                    for n, request in enumerate(request_iterator, 1):
                        state["read"] = time.monotonic()
                        if request is UNDECODABLE:
                            undecodable = Invalid(f"message {n} of the stream could not be decoded as a "
                                                  "TranslateRequest; send TranslateRequest messages of "
                                                  "proto/seq2seq/v1/translation.proto")
                            break
                        while not slots.acquire(timeout=1.0):
                            if not context.is_active():
                                raise grpc.RpcError()
                        with counting:
                            state["in_flight"] += 1
                        t = threading.Thread(target=run, args=(request,), daemon=True)
                        pending.append(t)
                        t.start()
                except grpc.RpcError:
                    pass  # the caller cancelled or went away: nothing more to read
                for t in pending:
                    t.join()
                if undecodable:
                    done.put(undecodable)
                done.put(None)

            threading.Thread(target=read, daemon=True).start()
            while True:
                try:
                    item = done.get(timeout=1.0)
                except queue.Empty:
                    idle = time.monotonic() - state["read"]
                    if self.stream_idle_s and state["in_flight"] == 0 and idle > self.stream_idle_s:
                        context.abort(grpc.StatusCode.CANCELLED, idle_stream(self.stream_idle_s))
                    continue
                if item is None:
                    return
                if isinstance(item, Invalid):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(item))
                if isinstance(item, BaseException):
                    raise item
                yield item

    def Evaluate(self, request, context):
        with self.metrics.observe("Evaluate", context, request.request_id, len(request.sources)):
            yield from self._evaluate(request, context)

    @staticmethod
    def _background(model, context):
        """Decodes a batch of an Evaluate job through the model's batcher, at background priority."""
        def decode(ids, opts):
            jobs = model.batcher.submit(ids, engine_options(opts), client=context.peer(), background=True)
            context.add_callback(lambda: [job.abandon() for job in jobs])
            return [hyps for job in jobs for hyps in from_engine(job.result())]
        return decode

    def _evaluate(self, request, context):
        from seq2seq.evaluate import grouped_references, task_options, task_scores

        model = self._model(request.model, context)
        try:
            opts = decoding_options(request.options, self.limits, model.decoding)
            backends = {"": ["cpp"], "cpp": ["cpp"], "python": ["python"], "both": ["cpp", "python"]}.get(request.backend)
            if backends is None:
                raise Invalid(f"backend must be cpp, python or both, not {request.backend!r}")
            if "cpp" in backends and model.backend != "cpp":
                raise Invalid(f"backend: model {model.name!r} is a {model.translator.model_cfg.family} model, which the "
                              "C++ engine does not run; ask for backend python")
            check_shard(request.shard, request.shards)
            pairs = self._evaluation_pairs(model, request)
        except Invalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        opts = task_options(model.task, opts)
        if model.task == "transliteration":  # a name's every target is a valid answer
            srcs, refs = grouped_references(pairs)
        else:
            srcs, refs = [s for s, _ in pairs], [[t] for _, t in pairs]
        indices = list(range(len(srcs)))
        if request.shards > 1:
            indices = indices[request.shard::request.shards]
            srcs, refs = [srcs[i] for i in indices], [refs[i] for i in indices]
        if not srcs:  # a shard beyond the sentences: nothing to do
            yield pb.EvaluateEvent(result=pb.EvaluateResult(request_id=request.request_id, model=model.name,
                                                            first_difference=-1))
            return
        results, outputs = [], {}
        for backend in backends:
            translator = model.translator if backend == "cpp" else model.python()
            started, nbest = time.perf_counter(), []
            # The engine's share goes through the model's batcher behind every interactive call,
            # so a batch job cannot starve them; the Python reference has no batcher to go through.
            decode = self._background(model, context) if backend == "cpp" else None
            for i in range(0, len(srcs), 64):
                if not context.is_active():
                    return
                try:
                    nbest += translator.translate(srcs[i:i + 64], opts, max_tokens=16384, decode=decode)
                except _C.QueueFull as e:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
                except _C.Abandoned:
                    return  # the caller has gone
                except ValueError as e:  # a source over the model's limit
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"among sentences {i + 1}..{min(i + 64, len(srcs))} of the job: {e}")
                yield pb.EvaluateEvent(progress=pb.Progress(backend=backend, done=len(nbest), total=len(srcs)))
            seconds = time.perf_counter() - started
            s = task_scores(model.task, nbest, srcs, refs)
            hyps = [t[0].text for t in nbest]
            outputs[backend] = hyps
            figures = {k: float(v) for k, v in s.items() if k in TASK_METRICS}
            figures.update({f"lead_{k}": float(v) for k, v in s.get("lead", {}).items() if k in TASK_METRICS})
            results.append(pb.BackendResult(backend=backend, bleu=s.get("bleu", 0.0),
                                            bleu_signature=s.get("bleu_signature", ""), chrf=s.get("chrf", 0.0),
                                            chrf_signature=s.get("chrf_signature", ""), metrics=figures,
                                            sentences_per_second=len(srcs) / seconds, seconds=seconds,
                                            hypotheses=hyps if request.return_texts else []))
        result = pb.EvaluateResult(request_id=request.request_id, model=model.name, sentences=len(srcs),
                                   results=results, first_difference=-1)
        if request.return_texts:
            result.indices.extend(indices)
            result.sources.extend(srcs)
            result.references.extend("\t".join(r) for r in refs)
        if len(outputs) == 2:
            a, b = outputs["cpp"], outputs["python"]
            result.identical = sum(x == y for x, y in zip(a, b))
            result.first_difference = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), -1)
        event = pb.EvaluateEvent(result=result)
        size = event.ByteSize()
        if size > self.max_message_bytes:  # gRPC would refuse to send it
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the result is {size} bytes, over the server's limit "
                          f"of {self.max_message_bytes} (--max-message-bytes); evaluate fewer sentences (limit, "
                          "shards) or without return_texts")
        yield event

    def _evaluation_pairs(self, model: Model, request) -> list[tuple[str, str]]:
        from seq2seq.data import load_dataset

        if request.sources or request.references:
            if request.corpus or request.split:
                raise Invalid("give sources and references, or corpus and split, not both")
            if len(request.sources) != len(request.references):
                raise Invalid(f"sources has {len(request.sources)} sentences and references {len(request.references)}; "
                              "they must be aligned")
            pairs = list(zip(request.sources, request.references))
        elif request.split:
            cfg = replace(model.translator.data_cfg, corpus=request.corpus or model.translator.data_cfg.corpus)
            if self.data_dir:
                cfg.data_dir = self.data_dir
            try:
                pairs = load_dataset(cfg, [request.split]).splits[request.split]
            except Exception as e:  # a missing corpus or split: say which
                raise Invalid(f"corpus {cfg.corpus!r} split {request.split!r}: {e}") from None
        else:
            raise Invalid("give sources and references, or a corpus split (corpus, split)")
        if request.limit:
            pairs = pairs[: request.limit]
        if not pairs:
            raise Invalid("no sentences to evaluate")
        if len(pairs) > self.limits.max_evaluate:
            raise Invalid(f"{len(pairs)} sentences; an Evaluate job takes at most {self.limits.max_evaluate} (set limit)")
        for i, (s, _) in enumerate(pairs):  # as Translate's sentences, else the engine fails on them mid-job
            self._encode_sentence(model, s, f"sources[{i}]")
        return pairs

    def ListModels(self, request, context):
        with self.metrics.observe("ListModels", context, "", 0):
            return pb.ListModelsResponse(models=[m.info() for m in self.models.values()])

    def GetModel(self, request, context):
        with self.metrics.observe("GetModel", context, "", 0):
            return self._model(request.name, context).info() if request.name else \
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name: which model?")


def model_paths(specs: list[str]) -> dict[str, str]:
    """'name=path' (or a bare path, named after its folder) -> {name: path}."""
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        if not name or not path:
            raise ValueError(f"--model {spec!r}: write NAME=EXPORT_DIR")
        if name in out:
            raise ValueError(f"--model: the name {name!r} is given twice")
        out[name] = path
    return out
