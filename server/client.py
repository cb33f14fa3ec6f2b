"""A client of the translation service (`seq2seq client ...`).

Several targets ("127.0.0.1:50051,127.0.0.1:50052") make one channel that spreads calls
over them with gRPC's client-side round_robin load balancing.
"""

from __future__ import annotations

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
                 sources=(), references=(), **options):
        request = pb.EvaluateRequest(model=model, backend=backend, corpus=corpus, split=split, limit=limit,
                                     sources=list(sources), references=list(references),
                                     options=options_message(**options))
        return self.stub.Evaluate(request, metadata=self.metadata)

    def models(self):
        return self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self.metadata).models

    def close(self):
        self.channel.close()
