# Two commands on a fresh clone (with ../shared beside it): `make benchmark` and `make test`.
# Both create .venv and install into it once; later runs reinstall only when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines: the CPU build of torch must come first, or a bare requirement pulls a CUDA build.
# On a GPU machine: make TORCH_SPEC='torch==2.13.0' EXTRA=gpu ...
TORCH_SPEC ?= torch==2.13.0
EXTRA ?= cpu
DATA ?= ../shared/datasets
OUT ?= results

.PHONY: install benchmark speed test test-fast

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRA),test]"
	touch $@

install: $(VENV)/.installed

# The main job: the benchmark on real data, end to end.
benchmark: install
	$(PY) -m benchmarks run --dataset $(DATA)/scifact --split dev --train-split train \
		--pipeline bm25 --pipeline bm25-rank --pipeline bm25-fit --pipeline dense --pipeline dense-lora-query \
		--pipeline hybrid --pipeline hybrid-lora-query --pipeline 'bm25>>ce' --output $(OUT)

# Speed: BM25 stage vs Pyserini vs rank-bm25; dense encode, ANN and LoRA-vs-full training; reranker.
speed: install
	$(PY) -m benchmarks speed-bm25 --datasets-root $(DATA) --output $(OUT)/speed-bm25
	$(PY) -m benchmarks speed-dense --datasets-root $(DATA) --output $(OUT)/speed-dense
	$(PY) -m benchmarks speed-rerank --datasets-root $(DATA) --output $(OUT)/speed-rerank

# Every test, the slow end-to-end ones included (CI runs this).
test: install
	$(PY) -m pytest --slow -q

test-fast: install
	$(PY) -m pytest -q
