"""An int8 ONNX MiniLM as the knowledge base's embedder: build throughput and recall.

    python benchmarks/onnx_embedder.py [--smoke]

Exports MiniLM with ``promptkit.export.export_embedder`` (int8 weights per channel) and
measures, on one machine in one run:

- throughput: the Rotten Tomatoes training reviews (10,201) embedded by raw
  ``SentenceTransformer.encode`` (fp32, batch 64) against a whole ``KnowledgeBase.build`` of the
  same texts with the ONNX embedder (chunking, encoding and writing the store included);
- quality: Python FAQ retrieval (answers indexed without their questions, 128-token chunks,
  distinct sections) with the fp32 and the int8 embedder, recall@1/5/10 over all 176 questions and
  over the 35 test questions, with paired tests from promptkit's evaluator.

Results go to benchmarks/results/onnx_embedder.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import promptkit as pk
from promptkit.export import export_embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, few texts (a test)")
    parser.add_argument("--out", default="runs/onnx-embedder")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    from promptkit import models

    name = pk.testing.tiny_model("bert") if args.smoke else "minilm"
    out = Path(args.out)
    started = time.perf_counter()
    onnx_dir = export_embedder(name, out / "minilm-int8")
    export_seconds = time.perf_counter() - started
    reviews = [r["text"] for r in pk.datasets.load("rotten_tomatoes")["train"]]
    reviews = reviews[:256] if args.smoke else reviews
    raw = SentenceTransformer(models.resolve(name), device="cpu")
    raw.encode(reviews[:128], batch_size=64)  # warm-up
    started = time.perf_counter()
    raw.encode(reviews, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    raw_seconds = time.perf_counter() - started
    records = [{"text": t} for t in reviews]
    pk.KnowledgeBase.build(records[:128], embedder=str(onnx_dir))  # warm-up, loads the model
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        pk.KnowledgeBase.build(records, embedder=str(onnx_dir), path=Path(scratch) / "kb")
        build_seconds = time.perf_counter() - started

    faq = pk.datasets.load("python_faq")
    questions = [q for split in ("train", "validation", "test") for q in faq[split]]
    source = pk.datasets.knowledge_dir("python-faq")
    chunking = {"max_tokens": 128}
    bases = {
        "fp32": pk.KnowledgeBase.build(source, embedder=name, chunking=chunking),
        "int8": pk.KnowledgeBase.build(source, embedder=str(onnx_dir), chunking=chunking),
    }

    def searcher(kb: pk.KnowledgeBase):
        return lambda q: [h.metadata.get("heading")
                          for h in kb.search(q, k=10, distinct="heading")]

    recall = {}
    for label, chosen in (("all", questions), ("test", faq["test"])):
        report = pk.Evaluator().retrieval(
            {k: searcher(kb) for k, kb in bases.items()},
            [q["question"] for q in chosen], [{q["passage_id"]} for q in chosen])
        report.title = f"fp32 and int8 MiniLM, python_faq {label} ({len(chosen)} questions)"
        print(report.table())
        recall[label] = {
            name: {k: round(v.value, 4) for k, v in report[name].metrics.items()
                   if k.startswith("recall@")}
            for name in bases
        }
    result = {
        "texts": len(reviews),
        "raw_sentence_transformers_texts_per_second": round(len(reviews) / raw_seconds, 1),
        "onnx_knowledge_base_build_texts_per_second": round(len(reviews) / build_seconds, 1),
        "build_speedup": round(raw_seconds / build_seconds, 2),
        "onnx_file_mb": round((onnx_dir / "onnx" / "model.onnx").stat().st_size / 2**20, 1),
        "export_seconds": round(export_seconds, 1),
        "recall": recall,
    }
    print(json.dumps(result, indent=1))
    if not args.smoke:
        Path("benchmarks/results/onnx_embedder.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
