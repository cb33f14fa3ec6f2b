"""A client of the translation service (`seq2seq client ...`).

Several targets ("127.0.0.1:50051,127.0.0.1:50052") make one channel that spreads calls
over them with gRPC's client-side round_robin load balancing.
"""

from __future__ import annotations

import threading

import grpc

from .protos import load

pb, pb_grpc = load()


def connect(targets: str, tls_ca: str = "", options: list | None = None) -> grpc.Channel:
    addresses = [t.strip() for t in targets.split(",") if t.strip()]
    if not addresses:
        raise ValueError("--target: give HOST:PORT, or several IPv4 ADDRESS:PORT separated by commas")
    opts = list(options or [])
    if len(addresses) > 1:
        target = "ipv4:" + ",".join(addresses)
        opts.append(("grpc.lb_policy_name", "round_robin"))
    else:
        target = addresses[0]
    if tls_ca:
        with open(tls_ca, "rb") as f:
            return grpc.secure_channel(target, grpc.ssl_channel_credentials(f.read()), opts)
    return grpc.insecure_channel(target, opts)


def metadata(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


def options_message(beam_size=None, n_best=None, max_length=None, length_penalty=None, alpha=None,
                    return_scores=False, return_attention=False):
    msg = pb.DecodingOptions(return_scores=return_scores, return_attention=return_attention)
    for name, value in (("beam_size", beam_size), ("n_best", n_best), ("max_length", max_length),
                        ("length_penalty", length_penalty), ("alpha", alpha)):
        if value is not None:
            setattr(msg, name, value)
    return msg


class Client:
    def __init__(self, targets: str, token: str = "", tls_ca: str = "", timeout: float | None = 60.0):
        self.channel = connect(targets, tls_ca)
        self.stub = pb_grpc.TranslationServiceStub(self.channel)
        self.metadata, self.timeout = metadata(token), timeout

    def translate(self, sentences: list[str], model: str = "", request_id: str = "", **options):
        request = pb.TranslateRequest(request_id=request_id, model=model, sentences=sentences,
                                      options=options_message(**options))
        return self.stub.Translate(request, timeout=self.timeout, metadata=self.metadata)

    def evaluate(self, model: str = "", backend: str = "cpp", corpus: str = "", split: str = "", limit: int = 0,
                 sources=(), references=(), shard: int = 0, shards: int = 0, return_texts: bool = False, **options):
        request = pb.EvaluateRequest(model=model, backend=backend, corpus=corpus, split=split, limit=limit,
                                     sources=list(sources), references=list(references), shard=shard,
                                     shards=shards, return_texts=return_texts, options=options_message(**options))
        return self.stub.Evaluate(request, metadata=self.metadata)

    def evaluate_spread(self, shards: int, progress=None, **job) -> dict:
        """One Evaluate job as `shards` calls at once; over a channel to several servers,
        round robin gives each its share. The shards' translations are merged and the whole
        corpus is scored here, so BLEU is the corpus BLEU, not an average of shards'."""
        from seq2seq.evaluate import score

        parts, errors = [None] * shards, []

        def run(k):
            try:
                for event in self.evaluate(shard=k, shards=shards, return_texts=True, **job):
                    if event.HasField("progress"):
                        if progress:
                            progress(k, event.progress)
                    else:
                        parts[k] = event.result
            except grpc.RpcError as e:
                errors.append(e)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(shards)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        parts = [p for p in parts if p.sentences]
        n = sum(p.sentences for p in parts)
        srcs, refs = [""] * n, [""] * n
        for p in parts:
            for i, s, r in zip(p.indices, p.sources, p.references):
                srcs[i], refs[i] = s, r
        results, outputs = [], {}
        if parts and parts[0].results and parts[0].results[0].metrics:
            raise ValueError("a spread Evaluate job scores translation models (BLEU over merged shards); this model "
                             "reports task metrics: evaluate it in one call (shards 1)")
        for j, backend in enumerate(b.backend for b in parts[0].results):
            hyps = [""] * n
            for p in parts:
                for i, h in zip(p.indices, p.results[j].hypotheses):
                    hyps[i] = h
            s = score(hyps, refs, srcs)
            seconds = max(p.results[j].seconds for p in parts)
            outputs[backend] = hyps
            results.append({"backend": backend, "bleu": s["bleu"], "chrf": s["chrf"],
                            "bleu_signature": s["bleu_signature"], "chrf_signature": s["chrf_signature"],
                            "sentences_per_second": n / seconds if seconds else 0.0})
        merged = {"sentences": n, "results": results}
        if len(outputs) == 2:
            a, b = outputs["cpp"], outputs["python"]
            merged["identical"] = sum(x == y for x, y in zip(a, b))
            merged["first_difference"] = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), -1)
        return merged

    def models(self):
        return self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self.metadata).models

    def close(self):
        self.channel.close()
