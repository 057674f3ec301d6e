"""Serving under load: a MiniLM classifier behind promptkit serve, 32 concurrent clients.

    python benchmarks/serve_load.py [--requests 1024] [--clients 32]

Fits (or reuses, with --reuse) a MiniLM ``full`` classifier on Rotten Tomatoes, measures its
offline ``predict`` throughput on the test reviews, then starts ``promptkit serve`` as a real
process and sends every review as its own request from ``--clients`` concurrent clients (one
asyncio process), with dynamic batching on and then off. Each measurement is the median of
``--passes`` passes (the passes are kept too). Reports requests/s, p50/p95/p99 latency and the
ratios the targets name; writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from run import machine

import promptkit as pk

OUT = Path(__file__).parent / "results" / "serve_load.json"


def classifier(path: Path, reuse: bool, smoke: bool) -> Any:
    if reuse and (path / "manifest.json").is_file():
        return pk.load_adapter(path)
    data = pk.datasets.load("rotten_tomatoes")
    train = pk.testing.toy_classification(48) if smoke else data["train"][:2000]
    validation = pk.testing.toy_classification(16, seed=1) if smoke else data["validation"][:500]
    adapter = pk.create_adapter(
        "full", model=pk.testing.tiny_model("bert") if smoke else "minilm",
        task=pk.Task.classification(["negative", "positive"]), epochs=1, batch_size=32,
        max_length=64, learning_rate=1e-4, warmup_ratio=0.1)
    adapter.fit(train, eval_data=validation)
    adapter.save(path)
    return adapter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(path: Path, batching: bool, options: list[str]) -> tuple[subprocess.Popen[str], str]:
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "promptkit", "serve", str(path), "--name", "sentiment",
               "--port", str(port), *options]
    if not batching:
        command.append("--no-batching")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


async def load(url: str, texts: list[str], clients: int) -> dict[str, Any]:
    """``clients`` keep-alive connections, each sending one review per request and waiting for
    its answer. Plain asyncio streams: the load generator shares the server's two cores, so it
    must cost next to nothing itself."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    statuses: list[int] = []
    pending = list(reversed(texts))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while pending:
            body = json.dumps({"model": "sentiment", "input": pending.pop()}).encode()
            started = time.perf_counter()
            writer.write(b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = next(int(line.split(b":")[1]) for line in lines
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses.append(int(lines[0].split()[1]))
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(texts), "seconds": seconds, "requests_per_second": len(texts) / seconds,
            "latency_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                           "p99": float(np.percentile(ms, 99))},
            "failures": sum(s != 200 for s in statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--work", default="runs/serve-bench")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--passes", type=int, default=3,
                        help="passes over the reviews per measurement; the median is reported")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--server", default="",
                        help="extra promptkit serve options, e.g. '--workers 2 --max-batch-size 16'")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    path = Path(args.work) / "sentiment"
    adapter = classifier(path, args.reuse, args.smoke)
    data = pk.datasets.load("rotten_tomatoes")["test"] if not args.smoke else \
        pk.testing.toy_classification(64, seed=3)
    texts = [r["text"] for r in data]
    texts = (texts * (args.requests // len(texts) + 1))[: args.requests]
    adapter.predict(texts[:32])  # warm
    offline_passes = []
    for _ in range(args.passes):
        started = time.perf_counter()
        adapter.predict(texts)
        offline_passes.append(len(texts) / (time.perf_counter() - started))
    offline = float(np.median(offline_passes))
    result: dict[str, Any] = {"offline_predict_per_second": offline, "clients": args.clients,
                              "offline_passes": offline_passes, "passes": args.passes,
                              "model": "minilm full classifier, max_length 64",
                              "server_options": args.server or "defaults"}
    for label, batching in (("batching", True), ("no_batching", False)):
        process, url = start(path, batching, args.server.split())
        try:
            asyncio.run(load(url, texts[: args.clients * 2], args.clients))  # warm up
            passes = [asyncio.run(load(url, texts, args.clients)) for _ in range(args.passes)]
        finally:
            process.terminate()
            process.wait(timeout=60)
        passes.sort(key=lambda p: p["requests_per_second"])
        result[label] = {**passes[len(passes) // 2],  # the median pass, latencies included
                         "passes_per_second": [p["requests_per_second"] for p in passes]}
    result["served_vs_offline"] = result["batching"]["requests_per_second"] / offline
    result["batching_vs_none"] = (result["batching"]["requests_per_second"]
                                  / result["no_batching"]["requests_per_second"])
    result["machine"] = machine()
    result["smoke"] = args.smoke
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
