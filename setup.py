from setuptools import find_packages, setup

setup(
    name="seq2seq",
    version="0.1.0",
    description="Sequence-to-sequence translation: training, a C++ engine and a gRPC service",
    python_requires=">=3.10",
    packages=find_packages(include=["seq2seq", "seq2seq.*"]),
    install_requires=["torch>=2.13", "sentencepiece>=0.2", "sacrebleu>=2.4", "tqdm>=4.66"],
    entry_points={"console_scripts": ["seq2seq=seq2seq.cli:main"]},
)
