"""Fine-tuning: determinism, early stopping, class weights, resume after SIGKILL, merge,
plain-PEFT loading, several adapters on one base, and two-process data-parallel training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import promptkit as pk

SETTINGS = {"epochs": 6, "batch_size": 8, "logging_steps": 50}


def scores(adapter, rows):
    return [p.scores["positive"] for p in adapter.predict(rows)]


def test_same_seed_same_results(tiny_bert, sentiment_task, toy_data):
    runs = []
    for _ in range(2):
        adapter = pk.create_adapter("lora", model=tiny_bert, task=sentiment_task, seed=3,
                                    learning_rate=1e-2, **SETTINGS)
        result = adapter.fit(toy_data)
        runs.append((result.train_loss, scores(adapter, toy_data[:5])))
    assert runs[0] == runs[1]


def test_early_stopping_and_metrics_log(tiny_bert, sentiment_task, toy_data, tmp_path):
    adapter = pk.create_adapter("full", model=tiny_bert, task=sentiment_task,
                                learning_rate=1e-3, epochs=30, batch_size=8,
                                early_stopping_patience=1, weight_decay=0.01, warmup_ratio=0.1,
                                label_smoothing=0.1, dropout=0.0, augment="word_dropout")
    result = adapter.fit(toy_data[:32], eval_data=toy_data[32:], run_dir=tmp_path / "run")
    assert result.stopped_early
    assert "accuracy" in result.eval_metrics
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in line for line in lines)
    elapsed = [line["elapsed_s"] for line in lines]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0


def test_group_by_length_pads_less(tiny_bert, sentiment_task):
    import random

    rng = random.Random(0)
    words = ["good", "bad", "film", "plot", "acting", "dull", "great"]
    rows = [{"text": " ".join(rng.choices(words, k=rng.choice([2, 3, 40, 45]))),
             "label": rng.choice(["negative", "positive"])} for _ in range(256)]
    padded = {}
    for grouped in (True, False):
        adapter = pk.create_adapter("full", model=tiny_bert, task=sentiment_task, epochs=1,
                                    batch_size=8, max_length=64, group_by_length=grouped)
        adapter.fit(rows)  # builds the model; the second fit below is the one measured
        seen = []

        def hook(module, args, kwargs, seen=seen):
            if module.training:  # training batches only (not the loss probe or the profile)
                seen.append(kwargs["input_ids"].numel())

        handle = adapter.model_.register_forward_pre_hook(hook, with_kwargs=True)
        adapter.fit(rows)
        handle.remove()
        padded[grouped] = sum(seen)
    # two length groups: grouped batches hold one kind, random ones mostly pad short to long
    assert padded[True] < 0.75 * padded[False], padded


def test_early_stopping_needs_eval_data(tiny_bert, sentiment_task, toy_data):
    adapter = pk.create_adapter("full", model=tiny_bert, task=sentiment_task, epochs=1,
                                early_stopping_patience=2)
    with pytest.raises(pk.errors.ConfigError, match="eval_data"):
        adapter.fit(toy_data)


def test_class_weights_change_training(tiny_bert, sentiment_task, toy_data):
    imbalanced = [r for r in toy_data if r["label"] == "negative"] + toy_data[:4]
    plain = pk.create_adapter("full", model=tiny_bert, task=sentiment_task, learning_rate=1e-3,
                              **SETTINGS)
    weighted = pk.create_adapter("full", model=tiny_bert, task=sentiment_task,
                                 learning_rate=1e-3, class_weights="balanced", **SETTINGS)
    plain.fit(imbalanced)
    weighted.fit(imbalanced)
    assert scores(plain, toy_data[:6]) != scores(weighted, toy_data[:6])
    with pytest.raises(pk.errors.ConfigError, match="unknown label"):
        pk.create_adapter("full", model=tiny_bert, task=sentiment_task,
                          class_weights={"neutral": 2.0}, **SETTINGS).fit(toy_data)


def test_one_class_training_set_refused(tiny_bert, sentiment_task, toy_data):
    adapter = pk.create_adapter("full", model=tiny_bert, task=sentiment_task)
    with pytest.raises(pk.errors.DataError, match="only one class"):
        adapter.fit([r for r in toy_data if r["label"] == "positive"])


def test_from_scratch_model(tiny_bert, sentiment_task, toy_data):
    import torch

    def embeddings(adapter):
        return adapter.model_.base_model.embeddings.word_embeddings.weight.detach().clone()

    pretrained = pk.models.load_model(tiny_bert, "AutoModelForSequenceClassification")
    # seed 5: the tiny checkpoint itself was initialised with seed 0
    scratch = pk.create_adapter("full", model=tiny_bert, task=sentiment_task, from_scratch=True,
                                learning_rate=1e-3, epochs=1, batch_size=8, seed=5)
    kept = pk.create_adapter("full", model=tiny_bert, task=sentiment_task, learning_rate=1e-12,
                             epochs=1, batch_size=8)
    result = scratch.fit(toy_data)
    kept.fit(toy_data)
    reference = pretrained.base_model.embeddings.word_embeddings.weight
    assert result.trainable_params == result.total_params > 0
    # the pretrained run barely moves from the checkpoint; the scratch run starts elsewhere
    assert torch.allclose(embeddings(kept), reference, atol=1e-6)
    assert (embeddings(scratch) - reference).abs().mean() > 1e-2


def test_lora_saves_only_adapter_and_loads_with_plain_peft(tiny_bert, sentiment_task, toy_data,
                                                           tmp_path):
    from peft import PeftModel

    adapter = pk.create_adapter("lora", model=tiny_bert, task=sentiment_task, learning_rate=1e-2,
                                **SETTINGS)
    adapter.fit(toy_data)
    adapter.save(tmp_path / "lora")
    files = {p.name for p in (tmp_path / "lora").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= files
    assert "model.safetensors" not in files
    base = pk.models.load_model(tiny_bert, "AutoModelForSequenceClassification",
                                id2label={0: "negative", 1: "positive"})
    plain = PeftModel.from_pretrained(base, str(tmp_path / "lora")).eval()
    import torch

    tokens = adapter.tokenizer_(adapter.task.render(toy_data[0]), return_tensors="pt")
    with torch.inference_mode():
        plain_probs = torch.softmax(plain(**tokens).logits, -1)[0, 1].item()
    assert plain_probs == pytest.approx(scores(adapter, toy_data[:1])[0], abs=1e-5)


def test_lora_merge_keeps_predictions(tiny_bert, sentiment_task, toy_data, tmp_path):
    adapter = pk.create_adapter("lora", model=tiny_bert, task=sentiment_task, learning_rate=1e-2,
                                **SETTINGS)
    adapter.fit(toy_data)
    reference = scores(adapter, toy_data[:6])  # taken before anything is merged
    merged = adapter.merge()
    assert merged.name == "full"
    assert scores(merged, toy_data[:6]) == pytest.approx(reference, abs=1e-5)
    # the source adapter is untouched: still a LoRA model, same predictions, still saveable
    assert type(adapter.model_).__name__.startswith("Peft")
    assert scores(adapter, toy_data[:6]) == pytest.approx(reference, abs=1e-5)
    adapter.save(tmp_path / "source")
    assert pk.load_adapter(tmp_path / "source").name == "lora"
    merged.save(tmp_path / "merged")
    assert pk.load_adapter(tmp_path / "merged").name == "full"
    # in place: no copy, and the spent source says so instead of predicting wrongly
    in_place = adapter.merge(inplace=True)
    assert scores(in_place, toy_data[:6]) == pytest.approx(reference, abs=1e-5)
    with pytest.raises(pk.errors.NotFittedError):
        adapter.predict(toy_data[:1])


def test_several_adapters_on_one_base(tiny_bert, sentiment_task, toy_data, tmp_path):
    first = pk.create_adapter("lora", model=tiny_bert, task=sentiment_task, learning_rate=1e-2,
                              **SETTINGS)
    first.fit(toy_data)
    second = pk.create_adapter("lora", model=tiny_bert, task=sentiment_task, learning_rate=1e-2,
                               seed=7, **SETTINGS)
    second.fit(list(reversed(toy_data)))
    second.save(tmp_path / "second")
    own, other = scores(first, toy_data[:4]), scores(second, toy_data[:4])
    first.add_adapter("second", tmp_path / "second")
    first.use("second")
    assert scores(first, toy_data[:4]) == pytest.approx(other, abs=1e-5)
    first.use("default")
    assert scores(first, toy_data[:4]) == pytest.approx(own, abs=1e-5)


def test_ia3_and_dora_train(tiny_bert, sentiment_task, toy_data):
    dora = pk.create_adapter("lora", model=tiny_bert, task=sentiment_task, use_dora=True,
                             learning_rate=1e-2, **SETTINGS)
    dora_result = dora.fit(toy_data)
    assert dora_result.trainable_params > 0
    assert any("lora_magnitude_vector" in n for n, _ in dora.model_.named_parameters())
    ia3 = pk.create_adapter("ia3", model=tiny_bert, task=sentiment_task, learning_rate=1e-2,
                            **SETTINGS)
    ia3_result = ia3.fit(toy_data)
    vectors = {n: p for n, p in ia3.model_.named_parameters() if "ia3_l" in n}
    assert vectors and all(p.requires_grad for p in vectors.values())
    # IA3 vectors start at 1; training must have moved them
    assert any((p - 1).abs().max() > 1e-4 for p in vectors.values())
    assert ia3_result.trainable_params < dora_result.trainable_params * 10


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys
    import promptkit as pk
    from promptkit.testing import toy_classification
    model, run_dir, resume, out = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    adapter = pk.create_adapter("full", model=model, task=task, epochs=8, batch_size=4,
                                learning_rate=1e-3, seed=0, logging_steps=1000)
    result = adapter.fit(toy_classification(64), run_dir=run_dir, resume=resume)
    probs = [p.scores["positive"] for p in adapter.predict(toy_classification(6, seed=1))]
    json.dump({"loss": result.train_loss, "probs": probs}, open(out, "w"))
""")


def test_kill_and_resume_matches_uninterrupted(tiny_bert, tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(RESUME_SCRIPT)
    run = [sys.executable, str(script), tiny_bert]
    subprocess.run([*run, str(tmp_path / "straight"), "0", str(tmp_path / "a.json")], check=True,
                   capture_output=True)
    run_dir = tmp_path / "killed"
    process = subprocess.Popen([*run, str(run_dir), "0", str(tmp_path / "never.json")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(run_dir.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    checkpoints = list(run_dir.glob("checkpoint-*"))
    assert checkpoints and not (tmp_path / "never.json").exists(), "killed mid-training"
    subprocess.run([*run, str(run_dir), "1", str(tmp_path / "b.json")], check=True,
                   capture_output=True)
    straight = json.loads((tmp_path / "a.json").read_text())
    resumed = json.loads((tmp_path / "b.json").read_text())
    # identical seeds and restored RNG/optimizer/scheduler state: same numbers to float noise
    assert resumed["loss"] == pytest.approx(straight["loss"], abs=1e-5)
    assert resumed["probs"] == pytest.approx(straight["probs"], abs=1e-5)


DDP_SCRIPT = textwrap.dedent("""
    import hashlib, os, sys
    import promptkit as pk
    from promptkit.testing import toy_classification
    model, out = sys.argv[1], sys.argv[2]
    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    adapter = pk.create_adapter("lora", model=model, task=task, epochs=2, batch_size=4,
                                learning_rate=1e-2, seed=0)
    adapter.fit(toy_classification(32))
    digest = hashlib.sha256()
    for name, tensor in sorted(adapter.model_.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    rank = os.environ["RANK"]
    open(f"{out}/weights-{rank}.txt", "w").write(digest.hexdigest())
    adapter.save(f"{out}/artifact-by-{rank}")
""")


def test_two_process_data_parallel(tiny_bert, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun is installed with torch"
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29533", str(script),
                           tiny_bert, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "weights-0.txt").read_text() == (tmp_path / "weights-1.txt").read_text()
    assert (tmp_path / "artifact-by-0" / "manifest.json").is_file()
    assert not (tmp_path / "artifact-by-1").exists()


def test_generation_fit_with_eval_data_and_early_stopping(tiny_gpt2, qa_task, toy_qa):
    adapter = pk.create_adapter("full", model=tiny_gpt2, task=qa_task, learning_rate=5e-2,
                                epochs=40, batch_size=8, early_stopping_patience=1,
                                logging_steps=50)
    result = adapter.fit(toy_qa[:16], eval_data=toy_qa[16:])
    assert "loss" in result.eval_metrics  # the best model was chosen on eval loss
    assert result.stopped_early  # a far too high rate overfits: stopping must trigger
    assert len(adapter.predict(toy_qa[:2])) == 2
    with pytest.raises(pk.errors.ConfigError, match="classification head.*'loss'"):
        pk.create_adapter("full", model=tiny_gpt2, task=qa_task, metric="accuracy").fit(toy_qa)
