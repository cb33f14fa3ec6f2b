# make setup [TORCH=cpu|cuda]   create .venv and install (idempotent)
# make demo                     the main job: train (or reuse) a French->English model, translate, export,
#                               score with the C++ engine and the Python reference (BLEU, parity), plot,
#                               then serve it over gRPC: translate and an Evaluate job through the server
# make test                     the whole test suite: the C++ library's tests (ctest), then pytest, then
#                               on an AVX-512 CPU also make test-avx2
# make test-avx2                the tests whose numbers depend on the CPU, as on an AVX2-only one
# make setup ARCH=x86-64-v3     the engine compiled for any AVX2 CPU, not this one (default native)
# make cuda-build               the extension with its CUDA kernels, built and loaded on any machine with nvcc
# make gpu-check-prepare         gather the exports, test pairs and wheels make gpu-check needs (runs/gpu)
# make gpu-check                on a GPU machine: build the CUDA kernels there, prove them (benchmarks/gpu_check.sh)
# make cpp                      build the C++ library, its tests, seq2seq-translate, seq2seq-serve and seq2seq-loadgen (CMake, build/cmake)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
TORCH ?= cpu
TORCH_cpu := torch==2.13.0
TORCH_cuda := torch==2.14.1
ifeq ($(TORCH_$(TORCH)),)
$(error TORCH=$(TORCH) is not known; use TORCH=cpu or TORCH=cuda)
endif
# The -march the engine's kernels are compiled for, by setup.py and CMake alike.
ARCH ?= native
export SEQ2SEQ_ARCH := $(ARCH)
STAMP := $(VENV)/.installed-$(TORCH)-$(ARCH)
# The CUDA build compiles csrc/ops/cuda/ for A100 and H100 (sm_80, sm_90; tests/test_cuda_build.py).
ifeq ($(TORCH),cuda)
export CUDA_HOME ?= /usr/local/cuda
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
endif
PY := $(VENV)/bin/python
DEMO := runs/demo

# The corpora beside the checkout, unless the user points elsewhere.
ifneq ($(wildcard ../shared/data),)
export SEQ2SEQ_DATA ?= $(abspath ../shared/data)
endif

.PHONY: setup demo test test-avx2 cpp cpp-deps gpu-check gpu-check-prepare cuda-build
setup: $(STAMP)

# The C++ engine is rebuilt when its sources change.
# The engine reads config.json with nlohmann-json (cpp-deps) in the Python module too.
$(STAMP): requirements.txt setup.py Makefile $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*/*.cpp csrc/*/*/*.h csrc/sources.txt proto/seq2seq/v1/*.proto) | cpp-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_$(TORCH)) -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -m seq2seq.server.protos >/dev/null  # the gRPC stubs, from proto/
	rm -f $(VENV)/.installed-*
	touch $@

S2S := $(VENV)/bin/seq2seq
DEMO_RECIPE := recipes/tatoeba_fr_en_demo.toml

demo: setup $(DEMO)/trained
	printf '%s\n' "Il fait beau aujourd'hui." "Je ne sais pas ce qu'il veut." "Nous avons acheté une voiture rouge." \
	  | $(S2S) translate --model $(DEMO)/best.pt --beam-size 5
	$(S2S) export $(DEMO)/best.pt $(DEMO)/export
	$(S2S) evaluate --model $(DEMO)/export --split test --beam-size 5 --backend both --out $(DEMO)/eval --quiet
	$(S2S) plot-attention --model $(DEMO)/best.pt "Nous avons acheté une voiture rouge." --out $(DEMO)
	@# The gRPC service on the same export: start, translate, an Evaluate job, stop (SIGTERM).
	$(S2S) serve --model demo=$(DEMO)/export --port 0 > $(DEMO)/server.out 2> $(DEMO)/server.log & pid=$$!; \
	for i in $$(seq 300); do grep -q serving $(DEMO)/server.out && break; sleep 0.2; done; \
	cat $(DEMO)/server.out; port=$$(sed -n 's/.*on 127.0.0.1:\([0-9]*\).*/\1/p' $(DEMO)/server.out); \
	$(S2S) client translate --target 127.0.0.1:$$port --beam-size 5 "Il fait beau aujourd'hui." \
	  "Nous avons acheté une voiture rouge." && \
	$(S2S) client evaluate --target 127.0.0.1:$$port --split test --backend both --beam-size 5 2>/dev/null; \
	status=$$?; kill -TERM $$pid; wait $$pid; echo "server stopped (exit $$?)"; exit $$status

# Trained once; an interrupted run resumes from its last checkpoint.
$(DEMO)/trained: $(DEMO_RECIPE) | $(STAMP)
	$(S2S) train $(DEMO_RECIPE) --out_dir=$(DEMO) $$(test -f $(DEMO)/last.pt && echo --resume)
	touch $@

CMAKE_BUILD := build/cmake
# Debian's packages the C++ library builds with (CMakeLists.txt); installed when missing.
CPP_DEBS := cmake ninja-build pkg-config libgtest-dev libsentencepiece-dev nlohmann-json3-dev libicu-dev \
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler

cpp-deps:
	@missing=$$(for p in $(CPP_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

cpp: setup
	mkdir -p $(CMAKE_BUILD)
	cmake -S . -B $(CMAKE_BUILD) -G Ninja -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DCMAKE_BUILD_TYPE=Release -DSEQ2SEQ_ARCH=$(ARCH) > $(CMAKE_BUILD)/configure.log || (cat $(CMAKE_BUILD)/configure.log; exit 1)
	cmake --build $(CMAKE_BUILD)

test: setup cpp
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure
	$(PY) -c "from seq2seq.engine import build_summary; print(build_summary())"
	$(PY) -m pytest -q tests
	@if grep -qw avx512f /proc/cpuinfo; then $(MAKE) --no-print-directory test-avx2; \
	else echo "test-avx2 not needed: this CPU has no AVX-512, the suite above ran at AVX2"; fi

# The tests whose numbers depend on the instruction set, run as on the lesser of the CPUs this
# project runs on (an AVX2-only EPYC) from a machine with AVX-512: the Python module built for
# x86-64-v3 beside the native one (build/x86-64-v3), and ATen, oneDNN and MKL capped at AVX2
# (with ATen at AVX2 the int8 path also takes the 7-bit activations of a CPU without VNNI).
LESSER := build/x86-64-v3
AVX2_ENV := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
  SEQ2SEQ_EXTENSION_DIR=$(abspath $(LESSER))/seq2seq
ISA_TESTS := tests/test_engine.py tests/test_devices.py tests/test_decoding.py \
  tests/test_models.py::test_copy_mixture_stays_float32_under_bfloat16_autocast
test-avx2: setup
	SEQ2SEQ_ARCH=x86-64-v3 $(PY) setup.py -q build_ext --build-lib $(LESSER) --build-temp $(LESSER)/tmp
	$(AVX2_ENV) $(PY) -c "from seq2seq.engine import build_summary, extension; print(build_summary()); \
	  assert extension().BUILD_ARCH == 'x86-64-v3', 'the x86-64-v3 build was not loaded'"
	$(AVX2_ENV) $(PY) -m pytest -q $(ISA_TESTS)

# The CUDA path proved on a machine with a GPU (benchmarks/gpu_check.sh says what it runs);
# what it needs is gathered beforehand on a CPU machine with the corpora.
gpu-check-prepare: setup $(DEMO)/trained
	benchmarks/gpu_check_prepare.sh

gpu-check:
	benchmarks/gpu_check.sh

# The CUDA build checked without a GPU: torch's CUDA build in .venv-cuda (5.5 GB), the
# extension with the kernels compiled into build/cuda, then loaded with its CUDA kernels
# registered. About 11 minutes of compiling on a 2-core AMD EPYC; not part of make test.
CUDA_VENV := .venv-cuda
cuda-build:
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install -q $(TORCH_cuda) numpy
	CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST="8.0;9.0" $(CUDA_VENV)/bin/python setup.py -q \
	  build_ext --build-lib build/cuda --build-temp build/cuda/tmp
	SEQ2SEQ_EXTENSION_DIR=$(abspath build/cuda)/seq2seq $(CUDA_VENV)/bin/python -c "import torch; \
	  from seq2seq import _C; assert _C.CUDA_KERNELS; \
	  assert all(torch._C._dispatch_has_kernel_for_dispatch_key('seq2seq::' + op, 'CUDA') for op in \
	    ('attention', 'multi_head_attention', 'add_layer_norm', 'beam_candidates')); \
	  print(_C.__file__, 'built with its CUDA kernels against torch', torch.__version__)"
