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

        feed = {
            name: np.asarray(
                inputs[name].cpu().numpy() if hasattr(inputs[name], "cpu") else inputs[name],
                dtype=np.int64,
            )
            for name in self.inputs
        }
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
    import torch

    require_onnxruntime()
    sample = tokenizer(SAMPLES, return_tensors="pt", padding=True)
    names = [n for n in INPUT_NAMES if n in sample]

    class Logits(torch.nn.Module):
        """Keyword arguments for the transformers model; ONNX passes them by position."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            return self.inner(**dict(zip(names, tensors, strict=True))).logits

    wrapper = Logits(model).eval()  # eval: the export restores this mode on the model after
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    root, level = logging.getLogger(), logging.getLogger().level
    try:
        with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
            # the tracer's notes on index ops and traced shapes concern graphs this one is not,
            # and the quantizer logs advice for image models on the root logger
            warnings.simplefilter("ignore")
            root.setLevel(max(level, logging.ERROR))
            plain = Path(scratch) / "model.fp32.onnx"
            with torch.no_grad():
                torch.onnx.export(
                    wrapper,
                    tuple(sample[n] for n in names),
                    str(plain),
                    input_names=names,
                    output_names=["logits"],
                    dynamic_axes={**axes, "logits": {0: "batch"}},
                    opset_version=opset,
                    dynamo=False,
                )
            if quantize == "int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                # per-channel weights: per-tensor int8 loses far more (embeddings: cosine 0.965
                # against 0.9925 per channel on MiniLM)
                quantize_dynamic(
                    str(plain), str(target), per_channel=True, weight_type=QuantType.QInt8
                )
            else:
                plain.replace(target)
    finally:
        root.setLevel(level)


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
