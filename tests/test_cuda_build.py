"""nvcc compiles every CUDA file of the engine (csrc/ops/cuda/*.cu) for the GPUs the builds
target, warnings as errors, and each kernel keeps to the budget written above it: registers,
no spilled bytes, no static shared memory. Runs wherever nvcc is, GPU or not."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CUDA = REPO / "csrc" / "ops" / "cuda"
ARCHS = ("sm_80", "sm_90")  # A100, H100: CMakeLists.txt's CMAKE_CUDA_ARCHITECTURES and the Makefile's list
BUDGET = re.compile(r"// ptxas budget: (\d+) registers, no spills, no static shared memory.*\n"
                    r"__global__ void __launch_bounds__\([\w, ]+\)\s+(\w+)\(")

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on the PATH")


def budgets(source: Path) -> dict[str, int]:
    return {kernel: int(registers) for registers, kernel in BUDGET.findall(source.read_text())}


def ptxas_report(source: Path, arch: str, out: Path) -> dict[str, str]:
    """ptxas' resource lines for each kernel of one file, by the kernel's name."""
    done = subprocess.run(["nvcc", "-std=c++17", f"-arch={arch}", "-I", str(REPO / "csrc"), "-Werror",
                           "all-warnings", "-Xptxas", "-v", "-c", str(source), "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report, kernel = {}, None
    for line in done.stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            kernel = m.group(1)
            report[kernel] = ""
        elif kernel:
            report[kernel] += line + "\n"
    return report


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(CUDA.glob("*.cu")), ids=lambda p: p.name)
def test_kernels_compile_within_their_budget(source, arch, tmp_path):
    wanted = budgets(source)
    assert wanted, f"{source.name}: every kernel states its budget in a '// ptxas budget:' line above it"
    report = ptxas_report(source, arch, tmp_path / "kernel.o")
    for kernel, registers in wanted.items():
        lines = next((text for name, text in report.items() if kernel in name), None)
        assert lines is not None, f"{source.name}: ptxas reported no {kernel} for {arch}"
        used = int(re.search(r"Used (\d+) registers", lines).group(1))
        assert used <= registers, f"{kernel} ({arch}) uses {used} registers, its budget is {registers}"
        assert "0 bytes spill stores, 0 bytes spill loads" in lines, f"{kernel} ({arch}) spills:\n{lines}"
        assert "smem" not in lines or re.search(r"\b0 bytes smem", lines), f"{kernel} ({arch}) static shared:\n{lines}"


def test_every_cuda_file_is_in_the_source_list():
    listed = {line.strip() for line in (REPO / "csrc" / "sources.txt").read_text().splitlines()}
    for source in sorted(CUDA.glob("*.cu")) + [CUDA / "register.cpp"]:
        assert f"ops/cuda/{source.name}" in listed, f"{source.name} is missing from csrc/sources.txt"
