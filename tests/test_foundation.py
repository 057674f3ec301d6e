"""Registry, errors, task and data validation, fast import, models and datasets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import promptkit as pk
from promptkit.errors import (
    ConfigError,
    DataError,
    ModelNotAvailableError,
    TemplateError,
    UnknownNameError,
)
from promptkit.registry import Registry


def test_import_is_fast_and_lazy():
    code = ("import time, sys; t = time.perf_counter(); import promptkit; "
            "d = time.perf_counter() - t; "
            "heavy = [m for m in ('torch', 'transformers', 'faiss', 'sentence_transformers') "
            "if m in sys.modules]; print(d, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(" ", 1)
    assert float(out[0]) < 1.0
    assert out[1].strip() == "[]"


def test_registry_did_you_mean():
    registry: Registry[int] = Registry("widget")
    registry.register("alpha", 1)
    registry.register("beta", lazy="json:dumps")
    assert registry.get("ALPHA") == 1
    assert registry.get("beta") is json.dumps
    with pytest.raises(UnknownNameError) as info:
        registry.get("alpah")
    assert "Did you mean 'alpha'" in str(info.value) and "alpha, beta" in str(info.value)
    with pytest.raises(ValueError):
        registry.register("alpha", 2)


def test_unknown_adapter_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'lora'"):
        pk.create_adapter("lorra")


def test_task_defaults_need_only_labels():
    task = pk.Task.classification(["neg", "pos"])
    assert task.text_fields == ["text"] and task.label_field == "label"
    assert "great" in task.render({"text": "great"})


def test_task_checks_template_fields_at_build_time():
    with pytest.raises(TemplateError, match="review"):
        pk.Task.classification(["a", "b"], text_fields=["review"], template="sentiment")


def test_task_rejects_single_label_and_duplicates():
    with pytest.raises(ConfigError, match="at least two labels"):
        pk.Task.classification(["only"])
    with pytest.raises(ConfigError, match="unique"):
        pk.Task.classification(["a", "a"])


def test_prepare_names_missing_field_and_unknown_label(sentiment_task):
    with pytest.raises(DataError, match=r"lacks field\(s\) \['label'\].*has \['text'\]"):
        sentiment_task.prepare([{"text": "x"}])
    with pytest.raises(DataError, match="label 'meh'.*label set"):
        sentiment_task.prepare([{"text": "x", "label": "meh"}])
    with pytest.raises(DataError, match="empty"):
        sentiment_task.prepare([])
    assert sentiment_task.prepare([{"text": 5, "label": 1}])[0] == {"text": "5",
                                                                    "label": "positive"}


def test_read_files_report_file_and_line(tmp_path, sentiment_task):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "negative"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        sentiment_task.prepare(str(bad))
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("text,label\ngood,positive\nbad,negative,extra\n")
    with pytest.raises(DataError, match=r"rows.csv:3: expected 2 columns"):
        sentiment_task.prepare(str(csv_file))
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("text\tlabel\nfine\tpositive\n")
    assert sentiment_task.prepare(str(tsv)) == [{"text": "fine", "label": "positive"}]


def test_dataframe_and_dataset_like_sources(sentiment_task):
    class FrameLike:
        columns = ["text", "label"]

        def to_dict(self, orient):
            assert orient == "records"
            return [{"text": "good", "label": "positive"}]

    assert sentiment_task.prepare(FrameLike())[0]["label"] == "positive"


def test_bad_settings_name_the_field(sentiment_task):
    with pytest.raises(ConfigError, match=r"r: Input should be greater than or equal to 1"):
        pk.create_adapter("lora", task=sentiment_task, r=0)
    with pytest.raises(ConfigError, match="learning_rate"):
        pk.create_adapter("full", task=sentiment_task, learning_rate=-1)
    with pytest.raises(ConfigError, match="top_k"):
        pk.create_adapter("knn", task=sentiment_task, top_k=0)
    with pytest.raises(ConfigError, match="unknown setting.*Allowed settings"):
        pk.create_adapter("full", task=sentiment_task, epochz=3)


def test_offline_hub_id_fails_with_aliases(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="minilm, smollm2-135m-instruct"):
        pk.models.resolve("some-org/not-cached-model")


def test_model_aliases_listed():
    names = {m["alias"]: m for m in pk.models.list_models()}
    assert set(names) == {"minilm", "smollm2-135m-instruct"}
    assert names["minilm"]["available"]


def test_python_faq_dataset_has_a_fixed_question_split():
    import hashlib
    import json

    faq = pk.datasets.load("python_faq")
    assert {k: len(v) for k, v in faq.items()} == {"train": 107, "validation": 36, "test": 35}
    rows = [row for split in faq.values() for row in split]
    assert len(rows) == 178 and all(row["passage_id"] and row["answer"] for row in rows)
    passages = {k: {r["passage_id"] for r in v} for k, v in faq.items()}
    assert not passages["test"] & (passages["train"] | passages["validation"])
    digest = hashlib.sha256(json.dumps(sorted(q["question"] for q in faq["test"])).encode())
    assert digest.hexdigest() == "ea31789afaba71fdabea2956301f213a5a2e4a1ce968e5b2280bddf8164b86e5"
    with pytest.raises(DataError, match="no split"):
        faq["dev"]


def test_unknown_dataset():
    with pytest.raises(UnknownNameError, match="rotten_tomatoes"):
        pk.datasets.load("rotten_tomatoe")
