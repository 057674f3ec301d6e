"""Render benchmarks/results/*.json as the Markdown table the README includes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _r(value: float) -> str:
    return f"{value:.2f}"


def write_table(folder: Path) -> Path:
    lines = ["| benchmark | promptkit vs baseline | target | met |", "| --- | --- | --- | --- |"]

    def row(label: str, figure: str, target: str, met: bool | None) -> None:
        lines.append(f"| {label} | {figure} | {target} | "
                     f"{'–' if met is None else ('yes' if met else 'no')} |")

    if s := _load(folder, "search"):
        b1, b64 = s["batch_1"]["ratio"], s["batch_64"]["ratio"]
        row("search, batch 1 (time vs raw faiss + SQLite fetch)",
            f"{_r(b1['median'])}x (range {_r(b1['best'])}–{_r(b1['worst'])})", "≤ 1.15x",
            b1["median"] <= 1.15)
        row("search, batch 64 (time vs raw)", f"{_r(b64['median'])}x", "report", None)
        for key, label in (("langchain", "LangChain FAISS store"),
                           ("llamaindex", "LlamaIndex FaissVectorStore")):
            peer = s["peers"].get(key)
            if isinstance(peer, dict):
                row(f"search vs {label}, 128 queries (time)",
                    f"{_r(peer['ratio']['median'])}x", "< 1x", peer["ratio"]["median"] < 1)
    if b := _load(folder, "build"):
        row("build throughput (vs raw SentenceTransformer.encode)",
            f"{_r(b['throughput_ratio'])}x", "≥ 0.9x", b["throughput_ratio"] >= 0.9)
        row("rebuild of an unchanged folder (share of a build; texts embedded)",
            f"{b['unchanged_update_fraction'] * 100:.1f}%, {b['unchanged_update_texts_embedded']}"
            " embedded", "< 5%, 0", b["unchanged_update_fraction"] < 0.05
            and b["unchanged_update_texts_embedded"] == 0)
    for file in ("fit", "fit_full"):
        if not (f := _load(folder, file)):
            continue
        for kind in ("full", "lora"):
            if kind in f:
                x = f[kind]
                low, high = x["throughput_ratio_range"]
                row(f"fit {kind}, {f['train_examples']:,} examples × {f['repeat']} (samples/s vs "
                    "plain Trainer script)",
                    f"{_r(x['throughput_ratio'])}x (range {_r(low)}–{_r(high)}); peak RSS "
                    f"{x['peak_rss_mb']['promptkit']:.0f} vs {x['peak_rss_mb']['plain']:.0f} MB; "
                    f"accuracy {x['accuracy']['promptkit']:.3f} vs {x['accuracy']['plain']:.3f}",
                    "≥ 0.95x", x["throughput_ratio"] >= 0.95)
    if p := _load(folder, "predict"):
        row("predict (examples/s vs transformers pipeline)", f"{_r(p['throughput_ratio'])}x",
            "≥ 1.0x", p["throughput_ratio"] >= 1.0)
    if e := _load(folder, "evaluator"):
        row(f"bootstrap, 5 metrics × {e['predictions']:,} predictions × {e['resamples']} "
            "resamples (vs Python loop)", f"{e['promptkit_s']:.1f}s vs "
            f"{e['python_loop_s_estimated']:.0f}s ({e['speedup']:.0f}x faster)", "report", None)
    if sc := _load(folder, "scale"):
        f, search = sc["faiss"], sc["faiss"]["search"]
        label = f"knowledge base on disk, {f['vectors']:,} × {f['dimension']} ({f['index']})"
        effort = ", ".join(f"{k} {v}" for k, v in search.get("search_setting", {}).items())
        row(f"{label}: recall@10 vs exact, held-out queries ({effort}, chosen on validation "
            "queries)", f"{search['recall_at_10']:.3f}",
            "≥ 0.95", search["recall_at_10"] >= 0.95)
        row("… queries/s at batch 64 (hits with text and metadata)",
            f"{search['queries_per_second_batch_64']:.0f}", "≥ 1,000",
            search["queries_per_second_batch_64"] >= 1000)
        row("… single-query latency p50 / p99", f"{search['latency_ms_p50']:.1f} / "
            f"{search['latency_ms_p99']:.1f} ms", "p99 ≤ 20 ms", search["latency_ms_p99"] <= 20)
        row("… peak RSS of a fresh process that opens it and searches",
            f"{search['peak_rss_mb']:.0f} MB", "< 1 GB", search["peak_rss_mb"] < 1024)
        add, delete = f["add_1pct"], f["delete_1pct"]
        row(f"… adding {add['chunks']:,} chunks (share of the {f['build_s']:.0f} s build)",
            f"{add['seconds']:.1f} s = {add['fraction_of_build']:.1%}, {add['index_trainings']} "
            f"trainings, {add['fraction_of_size_written']:.1%} of the bytes written", "≤ 5%, 0",
            add["fraction_of_build"] <= 0.05 and add["index_trainings"] == 0)
        row("… deleting them", f"{delete['seconds']:.1f} s = {delete['fraction_of_build']:.1%}",
            "≤ 5%", delete["fraction_of_build"] <= 0.05)
        row("… bytes per vector on disk (everything) / 100M projection",
            f"{f['bytes_per_vector']:.0f} B; {sc['projection_100M']['disk_gb_for_100M']:.0f} GB "
            f"disk, {sc['projection_100M']['ram_gb_for_100M']:.0f} GB RAM", "report", None)
        m = sc["milvus_lite"]
        row(f"milvus-lite, {m['vectors']:,} vectors: search + fetch vs raw pymilvus (time)",
            f"{m['search_batch_1']['ratio']:.2f}x; adding 1% = {m['add_fraction_of_build']:.1%} "
            "of its build", "≤ 1.15x", m["search_batch_1"]["ratio"] <= 1.15)
        r = sc["real_text"]
        row(f"real text: {r['chunks']:,} review snippets, hnsw_sq8 recall@10 vs exact",
            f"{r['recall_at_10_hnsw_sq8_vs_exact']:.3f}; build {r['build_s']:.0f} s with "
            f"embedding, {r['bytes_per_chunk']:.0f} B/chunk", "report", None)
    if sv := _load(folder, "serve_load"):
        b, n = sv["batching"], sv["no_batching"]
        row(f"serve, {sv['clients']} concurrent clients, one review per request (vs offline "
            "predict of the same reviews)",
            f"{b['requests_per_second']:.0f} vs {sv['offline_predict_per_second']:.0f} req/s = "
            f"{sv['served_vs_offline']:.2f}x; p50/p95/p99 {b['latency_ms']['p50']:.0f}/"
            f"{b['latency_ms']['p95']:.0f}/{b['latency_ms']['p99']:.0f} ms", "≥ 0.8x",
            sv["served_vs_offline"] >= 0.8)
        row("… dynamic batching vs none", f"{sv['batching_vs_none']:.2f}x "
            f"({n['requests_per_second']:.0f} req/s without)", "≥ 3x", sv["batching_vs_none"] >= 3)
    if dr := _load(folder, "drift"):
        row(f"drift alarm on {dr['trials']} in-distribution windows of {dr['window']} "
            "(false alarms)", f"{dr['false_alarm_rate']:.0%}", "≤ 5%", dr["false_alarm_rate"] <= 0.05)
        row("… traffic switching to Reuters news: alarm within one window",
            f"{dr['detection_within_one_window']:.0%} of {dr['trials']} trials", "≥ 90%",
            dr["detection_within_one_window"] >= 0.9)
    if ap := _load(folder, "api_parity"):
        local, api = ap["local"], ap["api"]
        row(f"zero-shot sentiment through the API ({ap['reviews']} reviews, promptkit serve, "
            f"{ap['scoring']['api'].split(' ')[0]} scoring) vs the same model locally",
            f"{api['value']:.3f} vs {local['value']:.3f} [{local['low']:.3f}, "
            f"{local['high']:.3f}]; agreement {ap['agreement']:.0%}; rerun "
            f"{ap['http_calls']['second_run']} HTTP calls", "inside the local interval",
            ap["api_within_local_interval"])
    if ox := _load(folder, "onnx_int8"):
        acc = ox["accuracy"]
        row(f"ONNX int8 `full` MiniLM vs torch fp32, {ox['examples']:,} test reviews: accuracy "
            "(McNemar p)", f"{acc['int8']:.3f} vs {acc['fp32']:.3f} "
            f"({ox['accuracy_difference_points']:+.2f} points, p = {ox['mcnemar_p']:.2f})",
            "within 1 point, p ≥ 0.05",
            abs(ox["accuracy_difference_points"]) <= 1 and ox["mcnemar_p"] >= 0.05)
        row("… predict throughput (vs promptkit's fp32 predict, same run) / model file",
            f"{ox['speedup']}x ({ox['examples_per_second']['int8']:.0f} vs "
            f"{ox['examples_per_second']['fp32']:.0f} ex/s); {ox['onnx_file_mb']} MB",
            "≥ 2.5x; ≤ 25 MB", ox["speedup"] >= 2.5 and ox["onnx_file_mb"] <= 25)
    if oe := _load(folder, "onnx_embedder"):
        fp32, int8 = oe["recall"]["all"]["fp32"], oe["recall"]["all"]["int8"]
        row(f"ONNX int8 MiniLM embedder: knowledge-base build of {oe['texts']:,} reviews vs raw "
            "SentenceTransformer.encode (texts/s)", f"{oe['build_speedup']}x "
            f"({oe['onnx_knowledge_base_build_texts_per_second']:.0f} vs "
            f"{oe['raw_sentence_transformers_texts_per_second']:.0f})", "≥ 2x",
            oe["build_speedup"] >= 2)
        row("… Python FAQ recall@10, all questions, int8 vs fp32",
            f"{int8['recall@10']:.3f} vs {fp32['recall@10']:.3f}", "within 1 point",
            abs(int8["recall@10"] - fp32["recall@10"]) <= 0.01)
    if ds := _load(folder, "distill"):
        small = ds["minilm_l3"]
        row("distilled MiniLM-L3 from the `full` MiniLM teacher: accuracy (share of the "
            "teacher's) / predict throughput", f"{small['student_accuracy']['value']:.3f} vs "
            f"{small['teacher_accuracy']['value']:.3f} ({small['accuracy_share_of_teacher']:.1%}); "
            f"{small['speedup']}x", "≥ 98%; ≥ 1.8x",
            small["accuracy_share_of_teacher"] >= 0.98 and small["speedup"] >= 1.8)
        llm = ds["from_zero_shot_llm"]
        student, teacher = llm["student_accuracy"], llm["teacher_accuracy"]
        gain = llm.get("student_minus_teacher")
        gained = (f"; student − teacher {gain['value']:+.3f} [{gain['low']:+.3f}, "
                  f"{gain['high']:+.3f}]" if gain else "")
        row(f"MiniLM taught by zero-shot SmolLM2 on {llm['unlabelled_reviews']:,} unlabelled "
            "reviews vs the teacher itself (accuracy, paired interval, McNemar p)",
            f"{student['value']:.3f} [{student['low']:.3f}, {student['high']:.3f}] vs "
            f"{teacher['value']:.3f}{gained} (p = {llm['mcnemar_p']:.3g})",
            "beats the teacher (p < 0.05)",
            student["value"] > teacher["value"] and llm["mcnemar_p"] < 0.05)
    if te := _load(folder, "train_efficiency"):
        reach, plain = te["time_to_plain_accuracy"], te["plain"]
        final = te["promptkit_final_accuracy"]
        row(f"fit MiniLM on all {te['train_examples']:,} training reviews: time to the plain "
            "Trainer script's final test accuracy (vs its time)",
            (f"{reach['seconds']:.0f} vs {plain['seconds']:.0f} s = {reach['ratio']:.2f}x"
             if reach["ratio"] is not None else f"not reached ({final:.3f})")
            + f"; accuracy {plain['test_accuracy']:.3f} plain, {final:.3f} promptkit at the end",
            "≤ 0.85x", reach["ratio"] is not None and reach["ratio"] <= 0.85)
        fl = te["flops"]
        row("… model FLOP utilisation (6 N per real token, vs the measured fp32 matmul peak); "
            "padded tokens per epoch", f"{fl['mfu']['promptkit']:.1%} vs "
            f"{fl['mfu']['plain']:.1%} of {fl['matmul_peak_flops'] / 1e9:.0f} GFLOP/s; "
            f"{fl['padded_tokens']['grouped']:,} grouped vs {fl['padded_tokens']['random']:,} "
            f"random ({fl['real_tokens']:,} real)", "report", None)
    if to := _load(folder, "tradeoffs"):
        row("quality against cost: adapters no other beats on both accuracy and predict "
            "throughput", ", ".join(to["pareto_front"]), "report", None)
    text = "\n".join(lines) + "\n"
    if q := _load(folder, "quality"):
        text += (f"\nRotten Tomatoes test accuracy and macro-F1 on {q['test_examples']:,} test "
                 f"reviews (95% bootstrap intervals). Trained adapters: MiniLM, "
                 f"{q['train_examples']:,} training examples, {q['settings']['epochs']} epochs, batch 32, "
                 "max_length 64, "
                 "10% warmup, per-method learning rates in `benchmarks/suites.py`, each reading "
                 "the review alone (no template); zero_shot: "
                 "SmolLM2-135M-Instruct scoring the `sentiment` template's label words; knn: MiniLM embeddings, 10 "
                 "neighbours over the same training examples.\n\n"
                 "| adapter | accuracy | macro-F1 | fit s | trainable params |\n"
                 "| --- | --- | --- | --- | --- |\n")
        for name, m in q["classification"].items():
            acc, f1 = m["accuracy"], m["f1_macro"]
            text += (f"| {name} | {acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] | "
                     f"{f1['value']:.3f} [{f1['low']:.3f}, {f1['high']:.3f}] | "
                     f"{m['fit_s'] or 0:.0f} | {m['trainable_params'] or 0:,} |\n")
    if r := _load(folder, "retrieval"):
        text += ("\nPython FAQ retrieval (all 178 questions — no retriever here is tuned — answers indexed without their "
                 "questions; MiniLM):\n\n| retriever | recall@1 | recall@5 | recall@10 | MRR |\n"
                 "| --- | --- | --- | --- | --- |\n")
        for name, m in r.items():
            if isinstance(m, dict) and "recall@1" in m:
                text += (f"| {name} | {m['recall@1']['value']:.3f} | {m['recall@5']['value']:.3f}"
                         f" | {m['recall@10']['value']:.3f} | {m['mrr']['value']:.3f} |\n")
    out = folder / "table.md"
    out.write_text(text)
    if folder.resolve() == RESULTS.resolve():
        include_in_readme(text)
    return out


RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- benchmarks/results/table.md -->", "<!-- end of table.md -->"


def include_in_readme(table: str, readme: Path = README) -> None:
    """Replace the README's copy of the table (between the two markers) with ``table``."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}{END}{tail}")


if __name__ == "__main__":
    write_table(RESULTS)
