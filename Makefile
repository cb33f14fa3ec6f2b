# make setup [TORCH=cpu|cuda]   create .venv and install (idempotent)
# make demo                     the main job: data pipeline on a real corpus
# make test                     the whole test suite
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

.PHONY: setup demo test
setup: $(STAMP)

$(STAMP): requirements.txt setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_$(TORCH)) -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(VENV)/bin/seq2seq data list
	$(VENV)/bin/seq2seq data stats multi30k --src de --tgt en
	$(VENV)/bin/seq2seq data prepare tatoeba --src fr --tgt en --max-ratio 3 --dedup --out $(DEMO) --show 4 --quiet

test: setup
	$(PY) -m pytest -q tests
