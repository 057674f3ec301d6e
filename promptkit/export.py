"""ONNX export and int8 quantization of fine-tuned classifiers, and the onnxruntime stand-in that
predicts with the export.

``adapter.export(directory, format="onnx", quantize="int8")`` traces the classifier (LoRA merged
first) with ``torch.onnx.export``, quantizes its weights to int8 per channel with
``onnxruntime.quantization.quantize_dynamic``, and writes an adapter artifact whose ``runtime`` is
``"onnx"``: tokenizer, ``model.onnx`` and ``export.json``, which holds sample inputs with the torch
model's probabilities for them. Loading the artifact runs the ONNX model on those samples and
refuses it if any probability differs by more than the stated tolerance, so a damaged file or an
onnxruntime that computes differently is caught before it predicts. Needs ``promptkit[onnx]``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

from promptkit.errors import ArtifactError, ConfigError

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
SAMPLES = [
    "An example input of middling length, so that the export sees real padding.",
    "short",
    "A second, rather different example: numbers 1, 2 and 3, and punctuation!",
    "the end",
]


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ConfigError(
            "ONNX export and runtime='onnx' need onnxruntime: pip install 'promptkit[onnx]'"
        ) from exc
    return onnxruntime


class OnnxClassifier:
    """Stands in for a ``*ForSequenceClassification`` model: ``model(**inputs).logits`` computed
    by onnxruntime (int64 inputs; the inputs the graph does not take are ignored)."""

    training = False  # always in inference mode, like a torch model after eval()

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import torch

        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, **inputs: Any) -> Any:
        import types

        import numpy as np
        import torch

        given = {
            name: np.asarray(value.cpu().numpy() if hasattr(value, "cpu") else value, np.int64)
            for name, value in inputs.items()
        }
        ids = given["input_ids"]
        defaults = {"token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids)}
        feed = {name: given[name] if name in given else defaults[name] for name in self.inputs}
        logits = self.session.run(["logits"], feed)[0]
        return types.SimpleNamespace(logits=torch.from_numpy(logits))

    def eval(self) -> OnnxClassifier:
        return self

    def parameters(self) -> Any:  # no torch parameters: model_device() answers CPU
        return iter(())


def export_classifier(
    model: Any, tokenizer: Any, target: Path, quantize: str | None, opset: int = 17
) -> None:
    """Write ``model`` (a sequence classifier) to ``target`` as ONNX, int8 if asked."""
    require_onnxruntime()
    sample = tokenizer(SAMPLES, return_tensors="pt", padding=True)
    names = [n for n in INPUT_NAMES if n in sample]
    _trace(model, names, sample, "logits", target, quantize, opset)


def reference_outputs(
    predict: Any, samples: list[dict[str, str]], tolerance: float
) -> dict[str, Any]:
    """Sample records and what the torch model predicts for them, for the check on load."""
    return {
        "tolerance": tolerance,
        "samples": samples,
        "probabilities": [p.scores for p in predict(samples)],
    }


def check_agreement(predict: Any, reference: dict[str, Any], where: Path) -> float:
    """Largest probability difference between the ONNX model and the stored torch outputs;
    raises ArtifactError past the stated tolerance."""
    got = predict(reference["samples"])
    worst = max(
        abs(p.scores[label] - value)
        for p, expected in zip(got, reference["probabilities"], strict=True)
        for label, value in expected.items()
    )
    if worst > reference["tolerance"]:
        raise ArtifactError(
            f"{where}: the ONNX model's probabilities differ from the exported torch model's by "
            f"{worst:.4f} on the stored samples (tolerance {reference['tolerance']}); re-export "
            "it with this onnxruntime, or predict with the torch artifact."
        )
    return worst


def write_reference(directory: Path, reference: dict[str, Any]) -> None:
    (directory / "export.json").write_text(json.dumps(reference, indent=1))


def read_reference(directory: Path) -> dict[str, Any]:
    path = directory / "export.json"
    if not path.is_file():
        raise ArtifactError(f"{directory} says runtime 'onnx' but holds no export.json.")
    return dict(json.loads(path.read_text()))


# ---- sentence embedders -------------------------------------------------------------------------

EMBEDDER_MARK = "promptkit_onnx.json"


def _trace(
    model: Any,
    names: list[str],
    sample: Any,
    output: str,
    target: Path,
    quantize: str | None,
    opset: int = 17,
) -> None:
    """``model(**inputs).<output>`` to ONNX at ``target`` (dynamic batch and length), int8 if
    asked. transformers models take keyword arguments; the exporter passes them by position."""
    import torch

    class Positional(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            return getattr(self.inner(**dict(zip(names, tensors, strict=True))), output)

    module = Positional(model)
    # plain attention ops: the SDPA path traces into extra Where/IsNaN nodes around the mask; the
    # int8 MiniLM classifier ran at 521-531 reviews/s from it against 580-783 from eager attention
    # (best of 3 passes in each of 3 and 4 runs, onnxruntime alone)
    setter = getattr(model, "set_attn_implementation", None)
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if setter is not None and attention not in (None, "eager"):
        setter("eager")

    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    out_axes = {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}
    root, level = logging.getLogger(), logging.getLogger().level
    try:
        with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root.setLevel(max(level, logging.ERROR))
            plain = Path(scratch) / "model.fp32.onnx"
            with torch.no_grad():
                torch.onnx.export(
                    module.eval(),  # eval: the export restores this mode on the model after
                    tuple(sample[n] for n in names),
                    str(plain),
                    input_names=names,
                    output_names=[output],
                    dynamic_axes={**axes, output: out_axes},
                    opset_version=opset,
                    dynamo=False,
                )
            if quantize == "int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(
                    str(plain), str(target), per_channel=True, weight_type=QuantType.QInt8
                )
            else:
                plain.replace(target)
    finally:
        root.setLevel(level)
        if setter is not None and attention not in (None, "eager"):
            setter(attention)  # the torch model predicts as before


def export_embedder(
    name: str, path: str | Path, quantize: str | None = "int8", min_cosine: float = 0.98
) -> Path:
    """Write the sentence-transformers embedder ``name`` (alias, id or folder) to ``path`` as a
    sentence-transformers folder plus its transformer in ONNX (int8 weights per channel unless
    ``quantize=None``). Use the folder as ``embedder=`` anywhere: promptkit encodes with
    onnxruntime there (mean or CLS pooling, normalized), and other tools still read it as the
    plain folder it also is. Loading checks the ONNX vectors of stored samples against the torch
    ones (cosine >= ``min_cosine``). The folder's weights fingerprint includes the ONNX file, so
    a knowledge base never mixes its vectors with the torch model's."""
    from sentence_transformers import SentenceTransformer

    from promptkit import models

    require_onnxruntime()
    target = Path(path)
    model = SentenceTransformer(models.resolve(name), device="cpu")
    pooling = _pooling(model)
    model.save(str(target))
    tokenizer = model.tokenizer
    sample = tokenizer(SAMPLES, return_tensors="pt", padding=True)
    names = [n for n in INPUT_NAMES if n in sample]
    transformer = model[0].auto_model
    (target / "onnx").mkdir(exist_ok=True)
    _trace(
        transformer,
        names,
        sample,
        "last_hidden_state",
        target / "onnx" / "model.onnx",
        quantize,
    )
    reference = model.encode(SAMPLES, normalize_embeddings=True, convert_to_numpy=True)
    mark = {
        "pooling": pooling,
        "quantize": quantize,
        "min_cosine": min_cosine,
        "samples": SAMPLES,
        "vectors": reference.tolist(),
    }
    (target / EMBEDDER_MARK).write_text(json.dumps(mark))
    OnnxEncoder(target)  # checks the export before anyone uses it
    return target


def _pooling(model: Any) -> str:
    pooling = model[1] if len(model) > 1 else None
    mode = getattr(pooling, "pooling_mode", None) or (
        "cls" if getattr(pooling, "pooling_mode_cls_token", False) else "mean"
    )
    if mode not in ("mean", "cls"):
        raise ConfigError(f"ONNX embedders support mean or CLS pooling; this one pools by {mode}.")
    return str(mode)


class OnnxEncoder:
    """Sentence vectors from an ``export_embedder`` folder with onnxruntime: the folder's
    tokenizer, the ONNX transformer, then mean or CLS pooling and L2 normalization."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from transformers import AutoTokenizer

        self.path = Path(path)
        self.mark = json.loads((self.path / EMBEDDER_MARK).read_text())
        self.model = OnnxClassifier(self.path / "onnx" / "model.onnx", threads)
        self.output = self.model.session.get_outputs()[0].name
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.max_length = _max_seq_length(self.path)
        got = self.encode(self.mark["samples"], batch_size=len(self.mark["samples"]))
        import numpy as np

        worst = float(np.min(np.sum(got * np.asarray(self.mark["vectors"]), axis=1)))
        if worst < self.mark["min_cosine"]:
            raise ArtifactError(
                f"{self.path}: the ONNX embedder's vectors reach only cosine {worst:.4f} with the "
                f"torch model's on the stored samples (at least {self.mark['min_cosine']} "
                "needed); export it again with this onnxruntime."
            )
        self.agreement = worst

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> Any:
        import numpy as np
        from tqdm.auto import tqdm

        # every text tokenized in one call, then batched by token count: the least padding
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        pad = self.tokenizer.pad_token_id or 0
        out = np.zeros((len(texts), 0), dtype=np.float32)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="Batches", disable=not progress):
            indices = order[start : start + batch_size]
            width = len(ids[indices[-1]])  # sorted: the last is the longest
            batch = {
                "input_ids": np.full((len(indices), width), pad, dtype=np.int64),
                "attention_mask": np.zeros((len(indices), width), dtype=np.int64),
                "token_type_ids": np.zeros((len(indices), width), dtype=np.int64),
            }
            for row, i in enumerate(indices):
                batch["input_ids"][row, : len(ids[i])] = ids[i]
                batch["attention_mask"][row, : len(ids[i])] = 1
            feed = {n: batch[n] for n in self.model.inputs}
            hidden = self.model.session.run([self.output], feed)[0]
            mask = batch["attention_mask"][..., None].astype(np.float32)
            if self.mark["pooling"] == "cls":
                vectors = hidden[:, 0]
            else:
                vectors = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            if out.shape[1] == 0:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[indices] = vectors
        return out


def _max_seq_length(path: Path) -> int:
    config = path / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length") or 256)
    return 256


def is_onnx_embedder(path: str | Path) -> bool:
    return (Path(path) / EMBEDDER_MARK).is_file()
