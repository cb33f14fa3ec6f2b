# make setup [TORCH=cpu|cuda]   create .venv and install (idempotent)
# make demo                     the main job: train (or reuse) a French->English model, translate, export,
#                               score with the C++ engine and the Python reference (BLEU, parity), plot,
#                               then serve it over gRPC: translate and an Evaluate job through the server
# make test                     the whole test suite: the C++ library's tests (ctest), then pytest
# make cpp                      build the C++ library, its tests, seq2seq-translate, seq2seq-serve and seq2seq-loadgen (CMake, build/cmake)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
TORCH ?= cpu
TORCH_cpu := torch==2.13.0
TORCH_cuda := torch==2.14.1
ifeq ($(TORCH_$(TORCH)),)
$(error TORCH=$(TORCH) is not known; use TORCH=cpu or TORCH=cuda)
endif
STAMP := $(VENV)/.installed-$(TORCH)
PY := $(VENV)/bin/python
DEMO := runs/demo

# The corpora beside the checkout, unless the user points elsewhere.
ifneq ($(wildcard ../shared/data),)
export SEQ2SEQ_DATA ?= $(abspath ../shared/data)
endif

.PHONY: setup demo test cpp cpp-deps
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
	  -DCMAKE_BUILD_TYPE=Release > $(CMAKE_BUILD)/configure.log || (cat $(CMAKE_BUILD)/configure.log; exit 1)
	cmake --build $(CMAKE_BUILD)

test: setup cpp
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure
	$(PY) -m pytest -q tests
