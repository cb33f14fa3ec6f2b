"""The gRPC translation service (`seq2seq serve`), installed as ``seq2seq.server``."""
