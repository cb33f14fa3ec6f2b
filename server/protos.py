"""The service's message and stub modules, generated from proto/seq2seq/v1/translation.proto
with grpc_tools.protoc (`make setup` runs this; otherwise the first import does)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

PROTO = Path(__file__).resolve().parents[1] / "proto" / "seq2seq" / "v1" / "translation.proto"
OUT = Path(__file__).resolve().parent / "_generated"


def generate(force: bool = False) -> Path:
    """Write translation_pb2.py and translation_pb2_grpc.py into server/_generated when
    they are missing or older than the .proto."""
    target = OUT / "translation_pb2_grpc.py"
    if not force and target.exists() and target.stat().st_mtime >= PROTO.stat().st_mtime:
        return OUT
    import grpc_tools
    from grpc_tools import protoc

    OUT.mkdir(exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    # The proto's folder is the include root, so the modules are plain translation_pb2*, not
    # seq2seq.v1.*, which would clash with this package's own name.
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO.parent}", f"-I{include}", f"--python_out={OUT}",
                        f"--grpc_python_out={OUT}", str(PROTO)])
    if code != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {PROTO} (exit {code})")
    return OUT


def load():
    """(translation_pb2, translation_pb2_grpc)."""
    out = str(generate())
    if out not in sys.path:
        sys.path.insert(0, out)
    return importlib.import_module("translation_pb2"), importlib.import_module("translation_pb2_grpc")


if __name__ == "__main__":
    print(generate(force=True))
