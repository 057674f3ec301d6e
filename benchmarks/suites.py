"""The benchmark suites. Each takes ``smoke`` and returns a JSON-ready dict."""

from __future__ import annotations

import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from run import measure, ratio, summarize, timed

import promptkit as pk


def _encoder(smoke: bool) -> str:
    return pk.testing.tiny_model("bert") if smoke else "minilm"


def _reviews(n: int, split: str = "train", smoke: bool = False) -> list[dict[str, Any]]:
    if smoke:
        return pk.testing.toy_classification(n)
    return pk.datasets.load("rotten_tomatoes")[split][:n]


# ---- 1. search --------------------------------------------------------------------------------

def _faq_questions() -> list[dict[str, Any]]:
    """All 178 Python FAQ questions, in file order."""
    faq = pk.datasets.load("python_faq")
    rows = [q for split in faq.values() for q in split]
    lines = (pk.datasets.knowledge_dir("python-faq") / "questions.jsonl").read_text().splitlines()
    order = {json.loads(line)["question"]: i for i, line in enumerate(lines) if line.strip()}
    return sorted(rows, key=lambda q: order[q["question"]])


def search(smoke: bool) -> dict[str, Any]:
    import faiss

    folder = pk.datasets.knowledge_dir("python-faq")
    kb = pk.KnowledgeBase.build(folder, embedder=_encoder(smoke))
    questions = [q["question"] for q in _faq_questions()]
    questions = questions[:8] if smoke else questions[:128]
    vectors = kb.embedder.encode(questions, progress=False)
    ids, stored = kb.store.all_vectors()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(stored.shape[1]))  # what the store searches
    index.add_with_ids(stored, ids)
    with tempfile.TemporaryDirectory() as tmp:
        kb.store.docs.backup(Path(tmp) / "docstore.sqlite")
        conn = sqlite3.connect(Path(tmp) / "docstore.sqlite")

        def raw(batch: np.ndarray) -> None:
            _, ids = index.search(batch, 10)
            for row in ids:
                marks = ",".join("?" * len(row))
                conn.execute(f"SELECT id, source, text, start, end, metadata FROM chunks "
                             f"WHERE id IN ({marks})", [int(i) for i in row]).fetchall()

        def ours(batch: np.ndarray) -> None:
            kb.search_by_vector(batch, k=10)  # the public path: hits with text, span, metadata

        repeat = 3 if smoke else 7
        result: dict[str, Any] = {"chunks": len(kb), "queries": len(questions)}
        for size in (1, 64):
            batches = [vectors[i: i + size] for i in range(0, len(vectors), size)]
            raw_t = timed(lambda b=batches: [raw(x) for x in b], repeat)
            our_t = timed(lambda b=batches: [ours(x) for x in b], repeat)
            result[f"batch_{size}"] = {"promptkit_s": our_t, "raw_faiss_sqlite_s": raw_t,
                                       "ratio": ratio(our_t, raw_t),
                                       "target": "<= 1.15" if size == 1 else "report"}
        result["end_to_end_search_ms"] = timed(
            lambda: [kb.search(q, k=10) for q in questions[:16]], repeat)["median"] / 16 * 1e3
        result["peers"] = _peer_search(kb, questions, repeat)
        conn.close()
    assert faiss is not None
    return result


def _peer_search(kb: Any, questions: list[str], repeat: int) -> dict[str, Any]:
    """LangChain's and LlamaIndex's FAISS stores on the same chunks and embeddings.

    Every system gets the same precomputed query vectors and returns the top 10 chunks with
    their text, so the comparison is search plus fetch, without query embedding.
    """
    import faiss

    peers: dict[str, Any] = {}
    ids, texts = kb.store.all_texts()
    _, vectors = kb.store.all_vectors()
    queries = kb.embedder.encode(questions, progress=False)

    def ours() -> None:
        for query in queries:  # one query at a time, as the peers are called
            kb.search_by_vector(query[None, :], k=10)

    ours_t = timed(ours, repeat)
    peers["promptkit_s"] = ours_t
    try:
        from langchain_community.vectorstores import FAISS

        class Unused:  # the vectors are given; an embedding function is never called
            def embed_documents(self, docs: list[str]) -> list[list[float]]:
                raise AssertionError

            def embed_query(self, text: str) -> list[float]:
                raise AssertionError

        store = FAISS.from_embeddings(list(zip(texts, vectors.tolist(), strict=True)), Unused(),
                                      distance_strategy="MAX_INNER_PRODUCT")
        lists = [q.tolist() for q in queries]
        theirs = timed(lambda: [store.similarity_search_by_vector(q, k=10) for q in lists],
                       repeat)
        peers["langchain"] = {"seconds": theirs, "ratio": ratio(ours_t, theirs)}
    except ImportError:
        peers["langchain"] = "not installed (pip install 'promptkit[bench]')"
    try:
        from llama_index.core.schema import TextNode
        from llama_index.core.vector_stores.types import VectorStoreQuery
        from llama_index.vector_stores.faiss import FaissVectorStore

        store_li = FaissVectorStore(faiss_index=faiss.IndexFlatIP(vectors.shape[1]))
        nodes = [TextNode(text=t, id_=str(i), embedding=v.tolist())
                 for i, t, v in zip(ids, texts, vectors, strict=True)]
        store_li.add(nodes)
        by_position = {str(n): node.text for n, node in enumerate(nodes)}

        def llama() -> None:
            for q in queries:
                found = store_li.query(VectorStoreQuery(query_embedding=q.tolist(),
                                                        similarity_top_k=10))
                [by_position.get(i) for i in found.ids or []]

        theirs = timed(llama, repeat)
        peers["llamaindex"] = {"seconds": theirs, "ratio": ratio(ours_t, theirs),
                               "note": "FaissVectorStore keeps no text; a dict stands in for "
                                       "LlamaIndex's docstore"}
    except ImportError:
        peers["llamaindex"] = "not installed (pip install 'promptkit[bench]')"
    return peers


# ---- 2. build ---------------------------------------------------------------------------------

def build(smoke: bool) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    folder = pk.datasets.knowledge_dir("python-faq")
    start = time.perf_counter()
    kb = pk.KnowledgeBase.build(folder, embedder=_encoder(smoke))
    first = time.perf_counter() - start
    _ids, texts = kb.store.all_texts()
    model = SentenceTransformer(pk.models.resolve(_encoder(smoke)))
    repeat = 2
    raw = timed(lambda: model.encode(texts, batch_size=64, normalize_embeddings=True), repeat)

    def rebuild() -> None:
        pk.KnowledgeBase.build(folder, embedder=_encoder(smoke))

    ours = timed(rebuild, repeat)
    with tempfile.TemporaryDirectory() as tmp:
        kb.save(Path(tmp) / "kb")
        loaded = pk.KnowledgeBase.load(Path(tmp) / "kb")
        before = loaded.embedder.texts_encoded
        update = timed(loaded.update, repeat)
        embedded = loaded.embedder.texts_encoded - before
    return {"chunks": len(texts), "first_build_s": first,
            "promptkit_build_s": ours, "raw_encode_s": raw,
            "chunks_per_second": {"promptkit": len(texts) / ours["median"],
                                  "raw_encode": len(texts) / raw["median"]},
            "throughput_ratio": raw["median"] / ours["median"], "target": ">= 0.9",
            "unchanged_update_s": update, "unchanged_update_fraction": update["median"] /
            ours["median"], "unchanged_update_texts_embedded": embedded,
            "update_target": "no embedding, < 5% of a build"}


# ---- 3. fit -----------------------------------------------------------------------------------

def _plain_fit(kind: str, model_path: str, rows: list[dict[str, Any]], settings: dict[str, Any],
               texts: list[str]) -> tuple[Any, Any]:
    """A hand-written transformers Trainer (+ peft) script with the same settings."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(settings["seed"])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    if kind == "lora":
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                                 lora_dropout=0.1))
    labels = {"negative": 0, "positive": 1}
    encoded = tokenizer(texts, truncation=True, max_length=settings["max_length"])
    data = [{"input_ids": i, "attention_mask": m, "labels": labels[r["label"]]}
            for i, m, r in zip(encoded["input_ids"], encoded["attention_mask"], rows,
                               strict=True)]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_train_epochs=settings["epochs"],
                                 per_device_train_batch_size=settings["batch_size"],
                                 learning_rate=settings["learning_rate"], seed=settings["seed"],
                                 data_seed=settings["seed"], save_strategy="no",
                                 report_to="none", logging_steps=50, disable_tqdm=True,
                                 dataloader_pin_memory=torch.cuda.is_available())
        trainer = Trainer(model=model, args=args, train_dataset=data,
                          data_collator=DataCollatorWithPadding(tokenizer))
        trainer.train()
    return model.eval(), tokenizer


def _plain_accuracy(model: Any, tokenizer: Any, texts: list[str], rows: list[dict[str, Any]],
                    max_length: int) -> float:
    import torch

    correct = 0
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start: start + 64], truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt")
            preds = model(**batch).logits.argmax(-1).tolist()
            correct += sum(p == (r["label"] == "positive")
                           for p, r in zip(preds, rows[start: start + 64], strict=True))
    return correct / len(rows)


def fit(smoke: bool, full: bool = False) -> dict[str, Any]:
    """promptkit fit vs a plain Trainer script: same model, data, template text, settings.

    Both are timed from loading the model to the end of training, alternating which goes first,
    ``repeat`` times each; peak resident memory is sampled during each run. ``full`` trains on
    the whole train split once (about 21 minutes for both methods on 2 cores) instead of a
    640-example subsample three times.
    """
    n_train = 48 if smoke else (None if full else 640)
    repeat = 1 if full else (2 if smoke else 3)
    data = _reviews(10**9 if n_train is None else n_train, smoke=smoke)
    test = _reviews(24 if smoke else 1276, "test", smoke)
    task = pk.Task.classification(["negative", "positive"])  # a classification head: text alone
    model = _encoder(smoke)
    path = pk.models.resolve(model)
    texts = [r["text"] for r in data]  # the plain script sees the same input text
    result: dict[str, Any] = {"train_examples": len(data), "test_examples": len(test),
                              "repeat": repeat}
    for kind, lr in (("full", 5e-5), ("lora", 5e-4)):
        settings = {"epochs": 1, "batch_size": 32, "max_length": 64, "learning_rate": lr,
                    "seed": 0}
        runs: dict[str, list[float]] = {"plain": [], "promptkit": []}
        rss: dict[str, list[float]] = {"plain": [], "promptkit": []}
        accuracy: dict[str, float] = {}
        for rep in range(repeat):
            for who in (("plain", "promptkit") if rep % 2 == 0 else ("promptkit", "plain")):
                if who == "plain":
                    (trained, tokenizer), seconds, peak = measure(
                        lambda s=settings, k=kind: _plain_fit(k, path, data, s, texts))
                    accuracy["plain"] = _plain_accuracy(trained, tokenizer,
                                                        [r["text"] for r in test], test,
                                                        settings["max_length"])
                else:
                    adapter = pk.create_adapter(kind, model=model, task=task, logging_steps=50,
                                                save_checkpoints=False, **settings)
                    _, seconds, peak = measure(lambda a=adapter: a.fit(data))
                    predictions = adapter.predict(test)
                    accuracy["promptkit"] = sum(
                        p.label == r["label"] for p, r in zip(predictions, test, strict=True)
                    ) / len(test)
                runs[who].append(seconds)
                rss[who].append(peak)
        ours, theirs = summarize(runs["promptkit"]), summarize(runs["plain"])
        result[kind] = {
            "promptkit_fit_s": ours, "plain_fit_s": theirs,
            "samples_per_second": {"promptkit": len(data) / ours["median"],
                                   "plain": len(data) / theirs["median"]},
            "throughput_ratio": theirs["median"] / ours["median"],
            "throughput_ratio_range": [theirs["min"] / ours["max"], theirs["max"] / ours["min"]],
            "target": ">= 0.95", "accuracy": accuracy,
            "peak_rss_mb": {who: max(values) for who, values in rss.items()},
            "settings": settings,
        }
    return result


# ---- 4. predict -------------------------------------------------------------------------------

def predict(smoke: bool) -> dict[str, Any]:
    from transformers import pipeline

    task = pk.Task.classification(["negative", "positive"])
    adapter = pk.create_adapter("full", model=_encoder(smoke), task=task, epochs=1,
                                batch_size=32, max_length=128, save_checkpoints=False)
    adapter.fit(_reviews(48 if smoke else 128, smoke=smoke))  # any trained model will do
    rows = _reviews(64 if smoke else 1000, "test", smoke)
    random.Random(0).shuffle(rows)
    texts = [r["text"] for r in rows]
    classifier = pipeline("text-classification", model=adapter.model_,
                          tokenizer=adapter.tokenizer_, device=-1, top_k=None)
    repeat = 2
    theirs = timed(lambda: classifier(texts, batch_size=32, truncation=True, max_length=128),
                   repeat)
    ours = timed(lambda: adapter.predict(rows), repeat)
    return {"examples": len(rows), "batch_size": 32, "promptkit_s": ours, "pipeline_s": theirs,
            "examples_per_second": {"promptkit": len(rows) / ours["median"],
                                    "pipeline": len(rows) / theirs["median"]},
            "throughput_ratio": theirs["median"] / ours["median"], "target": ">= 1.0"}


# ---- 5. evaluator -----------------------------------------------------------------------------

def evaluator(smoke: bool) -> dict[str, Any]:
    from sklearn import metrics as skm

    from promptkit.evaluation import bootstrap
    from promptkit.metrics import ClassificationBatch, metrics

    n = 2_000 if smoke else 100_000
    resamples = 50 if smoke else 1000
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 2, n)
    preds = np.where(rng.random(n) < 0.8, refs, 1 - refs)
    probs = np.clip(preds * 0.7 + 0.15 + rng.normal(0, 0.05, n), 0.01, 0.99)
    scores = np.stack([1 - probs, probs], axis=1)
    batch = ClassificationBatch(refs, preds, ["a", "b"], scores)
    names = ["accuracy", "f1_macro", "precision_macro", "recall_macro", "log_loss"]
    specs = [metrics.get(m) for m in names]
    import tracemalloc

    tracemalloc.start()
    start = time.perf_counter()
    bootstrap(specs, batch, n, resamples=resamples)
    ours = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    loop_resamples = resamples if smoke else 100  # the loop is timed on 100 and scaled
    start = time.perf_counter()
    for _ in range(loop_resamples):
        idx = rng.integers(0, n, n)
        r, p, s = refs[idx], preds[idx], scores[idx]
        skm.accuracy_score(r, p)
        skm.f1_score(r, p, average="macro")
        skm.precision_score(r, p, average="macro", zero_division=0)
        skm.recall_score(r, p, average="macro", zero_division=0)
        skm.log_loss(r, s, labels=[0, 1])
    loop = (time.perf_counter() - start) * resamples / loop_resamples
    return {"predictions": n, "resamples": resamples, "metrics": names,
            "promptkit_s": ours, "python_loop_s_estimated": loop,
            "loop_timed_resamples": loop_resamples, "speedup": loop / ours,
            "peak_traced_mb": peak}


# ---- 6. scale ---------------------------------------------------------------------------------

def scale(smoke: bool) -> dict[str, Any]:
    """A 1M-chunk knowledge base on disk, 1% updates, milvus-lite and a real-text corpus
    (benchmarks/kb_scale.py)."""
    from kb_scale import run

    with tempfile.TemporaryDirectory() as tmp:
        return run(20_000 if smoke else 1_000_000, 2_000 if smoke else 50_000,
                   Path(tmp) / "work", smoke)


# ---- 7. quality -------------------------------------------------------------------------------

# learning rates for 1,600 examples × 2 epochs (100 steps) with 10% warmup; the PEFT methods
# that train few parameters need far larger steps than full fine-tuning
QUALITY_LEARNING_RATES = {"full": 1e-4, "lora": 2e-3, "prompt_tuning": 3e-2,
                          "prefix_tuning": 1e-2, "p_tuning": 1e-2, "ia3": 1e-2}


def quality(smoke: bool) -> dict[str, Any]:
    n_train = 48 if smoke else 1600  # sized so that make bench stays within 30 minutes
    train, test = _reviews(n_train, smoke=smoke), _reviews(24 if smoke else 1276, "test", smoke)
    task = pk.Task.classification(["negative", "positive"])  # classification heads: text alone
    prompted = pk.Task.classification(["negative", "positive"], template="sentiment")
    model = _encoder(smoke)
    settings = {"epochs": 1 if smoke else 2, "batch_size": 32, "max_length": 64,
                "warmup_ratio": 0.1, "seed": 0, "save_checkpoints": False}
    candidates: dict[str, Any] = {
        name: pk.create_adapter(name, model=model, task=task, learning_rate=lr, **settings)
        for name, lr in QUALITY_LEARNING_RATES.items()
    }
    candidates["zero_shot"] = pk.create_adapter(
        "prompt", model=pk.testing.tiny_model("gpt2") if smoke else "smollm2-135m-instruct",
        task=prompted, batch_size=16)
    candidates["knn"] = pk.create_adapter("knn", task=task, embedder=model, top_k=10)
    for adapter in candidates.values():
        adapter.fit(train)
    report = pk.Evaluator(task, metrics=["accuracy", "f1_macro"]).compare(candidates, test)
    classification = {name: {m: r.metrics[m].to_dict() for m in r.metrics} | {
        "fit_s": r.costs.get("fit_seconds"), "trainable_params": r.costs.get("trainable_params")}
        for name, r in ((r.name, r) for r in report.results)}
    return {"train_examples": len(train), "test_examples": len(test),
            "classification": classification,
            "settings": settings | {"learning_rates": QUALITY_LEARNING_RATES,
                                    "model": model, "zero_shot_model": "smollm2-135m-instruct"}}


def _retrieval_quality(smoke: bool) -> dict[str, Any]:
    faq = _faq_questions()  # nothing here is tuned: every split is fair for untuned retrievers
    faq = faq[:20] if smoke else faq
    kb = pk.KnowledgeBase.build(pk.datasets.knowledge_dir("python-faq"), embedder=_encoder(smoke))

    def searcher(**options: Any) -> Any:
        def run(query: str) -> list[str]:
            return [h.metadata.get("heading") for h in kb.search(query, k=10, **options)]
        return run

    def bm25(query: str) -> list[str]:
        ranked = [i for i, _ in kb.store.search_text(query, 10)]
        chunks = kb.store.fetch(ranked)
        return [chunks[i]["metadata"].get("heading") for i in ranked]  # keep the rank order

    evaluator = pk.Evaluator(resamples=1000)
    searchers = {"dense": searcher(), "bm25": bm25, "hybrid": searcher(hybrid=True)}
    report = evaluator.retrieval(searchers, [q["question"] for q in faq],
                                 [{q["passage_id"]} for q in faq], k=10)
    return {r.name: {m: v.to_dict() for m, v in r.metrics.items()} for r in report.results} | {
        "note": "untuned retrievers only; the adapted retriever, the trained reranker and "
                "fusion tuned on validation are in benchmarks/retriever_fit.py"}


def retrieval(smoke: bool) -> dict[str, Any]:
    return _retrieval_quality(smoke)


SUITES = {"search": search, "build": build, "fit": fit, "predict": predict,
          "evaluator": evaluator, "scale": scale, "quality": quality, "retrieval": retrieval}
