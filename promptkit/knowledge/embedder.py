"""Sentence embeddings through sentence-transformers (or onnxruntime, for a folder written by
``promptkit.export.export_embedder``): batched, normalized, counted."""

from __future__ import annotations

from typing import Any

import numpy as np

from promptkit import export, models


class Embedder:
    """A sentence-transformers model by alias, id or path; ``calls`` counts encoded texts."""

    def __init__(
        self,
        name: str = "minilm",
        batch_size: int = 64,
        device: str = "auto",
        show_progress: bool = True,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        from promptkit.devices import resolve_device

        self.name = name
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.device = str(resolve_device(device))
        self.model = SentenceTransformer(models.resolve(name), device=self.device)
        self.dimension = int(self.model.get_embedding_dimension() or 0)
        self.onnx: Any = None  # a folder from promptkit.export.export_embedder: onnxruntime
        if export.is_onnx_embedder(models.resolve(name)):
            self.onnx = export.OnnxEncoder(models.resolve(name))
        self.fingerprint = fingerprint(name)
        self.texts_encoded = 0

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length or 256)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])

    def count_tokens_many(self, texts: list[str]) -> list[int]:
        """:meth:`count_tokens` of each text, in one tokenizer call."""
        if not texts:
            return []
        ids = self.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        return [len(i) for i in ids]

    def encode(self, texts: list[str], progress: bool | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        self.texts_encoded += len(texts)
        show = self.show_progress if progress is None else progress
        if self.onnx is not None:
            return np.asarray(
                self.onnx.encode(texts, self.batch_size, show and len(texts) > self.batch_size),
                dtype=np.float32,
            )
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show and len(texts) > self.batch_size,
        )
        return np.asarray(vectors, dtype=np.float32)


_HASHES: dict[tuple[str, int, int], str] = {}


def fingerprint(name: str) -> str:
    """What identifies the embedder's weights: a hash of a local model's weight files (a model
    retrained in place is a different embedder; a copy elsewhere is the same), else its name."""
    import hashlib
    from pathlib import Path

    from promptkit.artifacts import sha256_file

    path = Path(models.resolve(name))
    if not path.is_dir():
        return name
    digest = hashlib.sha256()
    files = sorted(path.rglob("*.safetensors")) or sorted(path.rglob("*.bin"))
    for weights in files + sorted(path.rglob("*.onnx")):  # an ONNX export differs from its model
        stat = weights.stat()
        key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _HASHES:  # hashed once per file version in a process
            _HASHES[key] = sha256_file(weights)
        digest.update(f"{weights.relative_to(path)}:{_HASHES[key]}".encode())
    return digest.hexdigest()[:16]


_EMBEDDERS: dict[tuple[str, str, str], Embedder] = {}


def get_embedder(name: str, device: str = "auto") -> Embedder:
    """One shared embedder per model and device in a process (read-only at inference)."""
    from promptkit.devices import resolve_device

    key = (name, str(resolve_device(device)), fingerprint(name))
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = Embedder(name, device=key[1])
    return _EMBEDDERS[key]
