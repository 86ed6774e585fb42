"""Load test of the HTTP service against the same pipeline called in-process.

    python -m benchmarks service-load --pipeline results/scifact/full/pipeline --dataset ../shared/datasets/scifact \\
        --split dev --requests 2000 --concurrency 16 --stages bm25 dense

The saved pipeline is copied into a temporary domains root and served on loopback by
``python -m retrieval serve`` in a child process. A fixed number of search requests (the split's queries, in
turn) is sent by ``--concurrency`` client threads with keep-alive connections; then the same requests are made
in this process by as many threads calling the loaded pipeline directly. Both report p50/p95/p99 latency and
throughput; the ratio is the cost of the service (HTTP, JSON, the queue, the shared-model lock).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from retrieval.data import load_dataset
from retrieval.pipeline.folder import load_pipeline
from retrieval.service.process import ServerProcess
from retrieval.stage import Pipeline
from retrieval.util import write_json

from . import plots
from .report import md_table


def _drive(call, texts: list[str], requests: int, concurrency: int, desc: str) -> dict:
    """``requests`` calls of ``call(text) -> status`` from ``concurrency`` threads; latency of each call."""
    latencies = np.zeros(requests)
    statuses = np.zeros(requests, dtype=np.int64)
    counter = iter(range(requests))
    lock = threading.Lock()
    bar = tqdm(total=requests, desc=desc, unit="req")

    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                statuses[i] = call(texts[i % len(texts)])
            except Exception:  # noqa: BLE001 - a transport failure counts as an error, not a crash of the run
                statuses[i] = 599
            latencies[i] = time.perf_counter() - t0
            bar.update()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    bar.close()
    ms = latencies * 1000
    return {"requests": requests, "concurrency": concurrency, "seconds": wall,
            "ok": int((statuses == 200).sum()), "4xx": int(((statuses >= 400) & (statuses < 500)).sum()),
            "5xx": int((statuses >= 500).sum()), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "throughput_qps": requests / wall, "latencies_ms": ms.round(3).tolist()}


def main(args) -> int:

    ds = load_dataset(args.dataset, args.split)
    texts = [ds.queries[q] for q in ds.queries]
    args.output.mkdir(parents=True, exist_ok=True)
    stages = list(args.stages) if args.stages else None
    body_extra = {"stages": stages} if stages else {}
    results = {}
    with tempfile.TemporaryDirectory(prefix="service-load-") as tmp:
        root = Path(tmp) / "root"
        shutil.copytree(args.pipeline, root / args.domain, ignore=shutil.ignore_patterns("journal.log"))
        server_args = ["--workers", str(args.workers), "--max-queue", str(max(args.max_queue, args.concurrency))]
        with ServerProcess(root, *server_args, log=Path(tmp) / "server.log") as server:
            import httpx

            local = threading.local()

            def over_http(text: str) -> int:
                client = getattr(local, "client", None)
                if client is None:
                    client = local.client = httpx.Client(base_url=server.url, timeout=120)
                r = client.post(f"/v1/domains/{args.domain}/search", json={"query": text, "k": args.k, **body_extra})
                return r.status_code

            for text in texts[: args.warmup]:
                over_http(text)
            results["service"] = _drive(over_http, texts, args.requests, args.concurrency, "service (HTTP)")
            metrics = server.client.get("/metrics").text

        pipe, _, _ = load_pipeline(args.pipeline, threads=args.threads)
        stage_names = [s.name for s in pipe.stages]
        if stages:  # the service has checked the names and their order
            pipe = Pipeline([s for s in pipe.stages if s.name in stages])

        def in_process(text: str) -> int:
            pipe.search_one(text)
            return 200

        for text in texts[: args.warmup]:
            in_process(text)
        results["in_process"] = _drive(in_process, texts, args.requests, args.concurrency, "in-process")

    svc, inp = results["service"], results["in_process"]
    ratio = {"p50": svc["p50_ms"] / inp["p50_ms"], "p95": svc["p95_ms"] / inp["p95_ms"],
             "p99": svc["p99_ms"] / inp["p99_ms"], "throughput": svc["throughput_qps"] / inp["throughput_qps"]}
    summary = {"pipeline": str(args.pipeline), "dataset": str(args.dataset), "split": args.split,
               "stages": stages or stage_names, "requests": args.requests, "concurrency": args.concurrency,
               "workers": args.workers, "k": args.k, "ratio_service_over_in_process": ratio,
               "service_5xx": svc["5xx"], "service_non_200": args.requests - svc["ok"],
               "prometheus_request_lines": [line for line in metrics.splitlines()
                                            if line.startswith("retrieval_requests_total")]}
    write_json(args.output / "service_load.json", {**summary, "results": results})
    rows = [[name, r["requests"], r["concurrency"], r["ok"], r["4xx"], r["5xx"], f"{r['p50_ms']:.1f}",
             f"{r['p95_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['throughput_qps']:.1f}"]
            for name, r in (("service (HTTP, loopback)", svc), ("pipeline in-process", inp))]
    rows.append(["ratio service / in-process", "", "", "", "", "", f"{ratio['p50']:.2f}", f"{ratio['p95']:.2f}",
                 f"{ratio['p99']:.2f}", f"{ratio['throughput']:.2f}"])
    table = md_table(["", "requests", "concurrency", "200", "4xx", "5xx", "p50 ms", "p95 ms", "p99 ms", "req/s"], rows)
    text = (f"# Service load test\n\n{Path(args.dataset).name} {args.split} queries in turn, "
            f"stages {' >> '.join(stages or stage_names)}, k={args.k}, {args.workers} service workers.\n\n{table}\n")
    (args.output / "service_load.md").write_text(text, encoding="utf-8")

    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, r in (("service (HTTP)", svc), ("in-process", inp)):
        ms = np.sort(r["latencies_ms"])
        ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=f"{name}: p50 {r['p50_ms']:.0f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("share of requests")
    ax.legend()
    plots.save(fig, ax, args.output / "service_load.png",
               f"{args.requests} requests at concurrency {args.concurrency}")
    print(text)
    print(f"wrote {args.output}/service_load.json, service_load.md, service_load.png")
    return 0 if svc["5xx"] == 0 else 1
