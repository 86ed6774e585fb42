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

.PHONY: install benchmark benchmark-corpus tune gate speed scale serve load test test-fast

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRA),test]"
	touch $@

install: $(VENV)/.installed

# Milliseconds a query may take through the whole pipeline (p50, one query at a time, on the machine that runs it).
BUDGET_MS ?= 100

# The main job: train the whole pipeline on SciFact train, benchmark every condition on SciFact dev (table,
# metrics.json, report.md, plots; the trained pipeline saved to $(OUT)/scifact/full/pipeline). The rerank depth is
# chosen on held-out training queries among the depths timed within $(BUDGET_MS) ms there while building.
benchmark: install
	$(PY) -m benchmarks run --config benchmarks/main.toml --datasets-root $(DATA) --output $(OUT) --latency-queries 30 \
		--rerank-budget-ms $(BUDGET_MS) --rerank-depths 5 10 20 30

# Collections without training judgements (Cranfield, Medline, ADI): the pipeline trained on its corpus alone
# against BM25, zero-shot MiniLM and their RRF (the floor it must beat).
benchmark-corpus: install
	$(PY) -m benchmarks run --config benchmarks/corpus_only.toml --datasets-root $(DATA) --output $(OUT)/corpus-only

# After the main job: each stage's depth chosen for the best nDCG@10 within $(BUDGET_MS) ms per query.
tune: install
	$(PY) -m benchmarks tune-cutoffs --pipeline $(OUT)/scifact/full/pipeline --dataset $(DATA)/scifact --split dev \
		--budget-ms $(BUDGET_MS) --output $(OUT)/scifact/cutoffs

# After the main job: a learned per-pair fusion gate vs the pipeline's one weight, cross-validated on the training
# queries the pipeline held out (README, "Routes tried for the third stage").
gate: install
	$(PY) -m benchmarks gate-study --pipeline $(OUT)/scifact/full/pipeline --dataset $(DATA)/scifact \
		--output $(OUT)/scifact/gate

# Speed: BM25 engines vs Pyserini; dense encode (torch, OpenVINO), ANN, LoRA-vs-full training; reranker (torch,
# OpenVINO); the trained pipeline (after `make benchmark`) as saved vs on torch.
speed: install
	$(PY) -m benchmarks speed-bm25 --datasets-root $(DATA) --output $(OUT)/speed-bm25
	$(PY) -m benchmarks speed-dense --datasets-root $(DATA) --output $(OUT)/speed-dense
	$(PY) -m benchmarks speed-rerank --datasets-root $(DATA) --output $(OUT)/speed-rerank
	$(PY) -m benchmarks speed-inference --pipeline $(OUT)/scifact/full/pipeline --dataset $(DATA)/scifact --split dev \
		--output $(OUT)/speed-inference

# Scale-out on Ray (a local cluster of this machine's cores): encoding with 1 and 2 actors, indexing on the cluster vs
# here, search with 1/2/4 shards, compressed indexes (~100K passages cut from the shared corpora).
scale: install
	$(PY) -m benchmarks scale-out --datasets-root $(DATA) --output $(OUT)/scale-out

# The search service over the saved pipelines under $(ROOT) (writes need $$RETRIEVAL_API_KEY).
ROOT ?= domains
PORT ?= 8080
serve: install
	$(PY) -m retrieval serve --root $(ROOT) --port $(PORT)

# After the main job: the service under load vs the same pipeline in-process (2,000 requests, 16 at a time,
# BM25 >> dense; then 300 requests through all three stages).
load: install
	$(PY) -m benchmarks service-load --pipeline $(OUT)/scifact/full/pipeline --dataset $(DATA)/scifact --split dev \
		--requests 2000 --concurrency 16 --stages bm25 dense --output $(OUT)/service-load/bm25-dense
	$(PY) -m benchmarks service-load --pipeline $(OUT)/scifact/full/pipeline --dataset $(DATA)/scifact --split dev \
		--requests 300 --concurrency 16 --output $(OUT)/service-load/full

# Every test, the slow end-to-end ones included (CI runs this).
test: install
	$(PY) -m pytest --slow -q

test-fast: install
	$(PY) -m pytest -q
