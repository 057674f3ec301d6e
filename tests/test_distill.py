"""The distill adapter: a student learns a teacher's probabilities, labelled or not."""

from __future__ import annotations

import json

import pytest
import torch

import promptkit as pk
from promptkit.adapters.distill import cut_layers
from promptkit.testing import tiny_model, toy_classification

TASK = pk.Task.classification(["negative", "positive"])
FAST = {"epochs": 10, "batch_size": 8, "logging_steps": 100, "save_checkpoints": False}


@pytest.fixture(scope="module")
def teacher():
    adapter = pk.create_adapter("full", model=tiny_model("bert"), task=TASK, learning_rate=1e-3,
                                **FAST)
    adapter.fit(toy_classification(48))
    return adapter


def test_layers_are_cut_evenly_from_the_model_itself():
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
        intermediate_size=32))
    layers = list(model.bert.encoder.layer)
    cut = cut_layers(model, 3)
    assert list(cut.bert.encoder.layer) == [layers[0], layers[2], layers[4]]
    assert cut.config.num_hidden_layers == 3
    with pytest.raises(pk.errors.ConfigError, match="cannot keep 7"):
        cut_layers(cut, 7)


def test_student_learns_the_teacher_from_unlabelled_text(teacher, tmp_path):
    unlabelled = [{"text": r["text"]} for r in toy_classification(64, seed=21)]
    student = pk.create_adapter("distill", teacher=teacher, student=f"{tiny_model('bert')}-l1",
                                task=TASK, learning_rate=2e-3, **FAST)
    student.fit(unlabelled)
    assert student.model_.config.num_hidden_layers == 1
    held_out = [r["text"] for r in toy_classification(40, seed=22)]
    taught = [p.label for p in teacher.predict(held_out)]
    learned = [p.label for p in student.predict(held_out)]
    assert sum(a == b for a, b in zip(taught, learned, strict=True)) >= 36
    student.save(tmp_path / "student")
    manifest = json.loads((tmp_path / "student" / "manifest.json").read_text())
    assert manifest["config"]["teacher_name"] == f"full:{tiny_model('bert')}"
    again = pk.load_adapter(tmp_path / "student")
    assert [p.label for p in again.predict(held_out)] == learned


def test_the_loss_mixes_soft_and_hard_as_documented():
    import torch.nn.functional as F

    from promptkit.adapters.trainer import DistillTrainer

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.7, 0.3], [0.4, 0.6]])

    class Model(torch.nn.Module):
        def forward(self, **inputs):
            return type("Out", (), {"logits": logits})()

    trainer = DistillTrainer.__new__(DistillTrainer)
    trainer.temperature, trainer.alpha, trainer.class_weights, trainer.smoothing = 2.0, 0.25, None, 0
    inputs = {"teacher_probs": teacher, "has_label": torch.tensor([1, 0]),
              "labels": torch.tensor([0, 1]), "input_ids": torch.zeros(2, 3)}
    got = trainer.compute_loss(Model(), dict(inputs))
    target = F.softmax(torch.log(teacher) / 2, dim=-1)
    soft = F.kl_div(F.log_softmax(logits / 2, dim=-1), target, reduction="batchmean") * 4
    hard = F.cross_entropy(logits[:1], torch.tensor([0]))  # the one labelled row
    assert float(got) == pytest.approx(float(0.25 * soft + 0.75 * hard), rel=1e-5)


def test_a_teacher_with_other_labels_is_refused(teacher):
    with pytest.raises(pk.errors.ConfigError, match="teacher predicts"):
        pk.create_adapter("distill", teacher=teacher,
                          task=pk.Task.classification(["bad", "good", "neutral"]))


def test_confident_keeps_the_same_number_per_label_by_the_teachers_ranking(teacher):
    unlabelled = [{"text": r["text"]} for r in toy_classification(40, seed=23)]
    labelled = toy_classification(4, seed=24)
    student = pk.create_adapter("distill", teacher=teacher, student=f"{tiny_model('bert')}-l1",
                                task=TASK, confident=0.5, **FAST)
    student.soft_ = [[0.9 - 0.01 * i, 0.1 + 0.01 * i] for i in range(44)]  # leans negative
    student.pseudo_ = ["negative"] * 44
    kept = student._confident(unlabelled + labelled)
    chosen = kept[: len(kept) - 4]
    assert kept[-4:] == labelled  # labelled records stay, as they are
    assert [r["label"] for r in chosen].count("positive") == 10
    assert [r["label"] for r in chosen].count("negative") == 10
    positive = {r["text"] for r in chosen if r["label"] == "positive"}
    assert positive == {r["text"] for r in unlabelled[30:40]}  # highest p(positive): the last
    assert len(student.soft_) == len(student.pseudo_) == len(kept)
    student.fit(unlabelled)  # end to end: the teacher's own probabilities
    assert student.fitted_
