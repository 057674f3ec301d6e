"""The "retrieval" adapter: knowledge injection, kNN classification, retrieved demonstrations.

* With ``base=<adapter>`` and ``knowledge=<KnowledgeBase>``, the top-k passages for each input are
  put in the template's context slot (``passages``, numbered for citation) and the base adapter
  predicts; predictions carry the sources and scores. No weights change.
* With no base on a classification task, ``fit(train)`` indexes the labelled examples and
  ``predict`` votes over the ``top_k`` nearest neighbours (similarity-weighted).
* With ``base`` a ``prompt`` adapter that has ``shots > 0`` and ``demonstrations=True``, the
  nearest labelled training examples become its few-shot demonstrations.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from promptkit.adapters.base import Adapter, AdapterConfig, FitResult, Prediction
from promptkit.errors import ConfigError


class RetrievalConfig(AdapterConfig):
    base: Any = Field(None, exclude=True, description="The adapter that receives the passages.")
    knowledge: Any = Field(None, exclude=True, description="A KnowledgeBase, or its directory.")
    embedder: str = Field("minilm", description="Embedder for the kNN / demonstration memory.")
    top_k: int = Field(4, ge=1, le=1000, description="Passages or neighbours per input.")
    filter: dict[str, Any] | None = Field(None, description="Metadata filter for every search.")
    hybrid: bool = Field(False, description="Fuse BM25 with dense search.")
    context_field: str = Field("passages", description="Template variable for the passages.")
    demonstrations: bool = Field(False, description="Give retrieved examples to the base as shots.")
    temperature: float = Field(0.05, gt=0, description="Softness of the kNN similarity vote.")

    @model_validator(mode="before")
    @classmethod
    def _task_from_base(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("task") is None and data.get("base") is not None:
            data = {**data, "task": data["base"].task}
        return data


class RetrievalAdapter(Adapter):
    """Retrieval-based knowledge injection around any adapter, or kNN classification alone."""

    name = "retrieval"
    Config: ClassVar[type[AdapterConfig]] = RetrievalConfig
    trains = False
    config: RetrievalConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.base_: Adapter | None = self.config.base
        self.knowledge_: Any = self._as_knowledge(self.config.knowledge)
        self.memory_: Any = None  # labelled examples, for kNN voting or demonstrations

    @classmethod
    def create(cls, **settings: Any) -> Adapter:
        adapter = super().create(**settings)
        assert isinstance(adapter, RetrievalAdapter)
        if adapter.base_ is None and adapter.task.kind != "classification":
            raise ConfigError(
                "The retrieval adapter needs base=<adapter> for generation tasks; "
                "alone it classifies by kNN."
            )
        if (
            adapter.base_ is not None
            and adapter.knowledge_ is None
            and not (adapter.config.demonstrations)
        ):
            raise ConfigError(
                "Pass knowledge=<KnowledgeBase or directory> to inject passages, or "
                "demonstrations=True to retrieve few-shot examples."
            )
        return adapter

    @staticmethod
    def _as_knowledge(value: Any) -> Any:
        if value is None or not isinstance(value, (str, Path)):
            return value
        from promptkit.knowledge import KnowledgeBase

        return KnowledgeBase.load(value)

    @property
    def _knn(self) -> bool:
        return self.base_ is None

    # ---- hooks --------------------------------------------------------------------------------

    def _fit(
        self,
        train: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None,
        *,
        resume: bool,
        run_dir: Path | None,
    ) -> FitResult:
        from promptkit.knowledge import KnowledgeBase

        result = FitResult()
        if self._knn or self.config.demonstrations:
            field, label = self.task.text_fields[0], self.task.label_field
            records = [
                {"text": r[field], "label": r[label], "row": i, "source": f"example:{i}"}
                for i, r in enumerate(train)
            ]
            self.memory_ = KnowledgeBase.build(
                records, embedder=self.config.embedder, chunking={"max_tokens": 512, "overlap": 0}
            )
        if self.base_ is not None:
            base_train = [self._with_context(r, i) for i, r in enumerate(train)]
            result = self.base_.fit(base_train, eval_data)
        result.total_params = result.total_params or 0
        return result

    def _with_context(
        self, record: dict[str, Any], _: int = 0, hits: list[Any] | None = None
    ) -> dict[str, Any]:
        if self.knowledge_ is None or self.config.context_field in record:
            return record
        query = " ".join(str(record[f]) for f in self.task.text_fields)
        found = (
            hits
            if hits is not None
            else self.knowledge_.search(
                query, k=self.config.top_k, filter=self.config.filter, hybrid=self.config.hybrid
            )
        )
        return {**record, self.config.context_field: [h.to_dict() for h in found]}

    def _predict(self, records: list[dict[str, Any]]) -> list[Prediction]:
        queries = [" ".join(str(r[f]) for f in self.task.text_fields) for r in records]
        if self._knn:
            return self._vote(self._memory().search_many(queries, k=self.config.top_k))
        enriched = records
        sources: list[list[dict[str, Any]]] = [[] for _ in records]
        if self.knowledge_ is not None:
            hits = self.knowledge_.search_many(
                queries, k=self.config.top_k, filter=self.config.filter, hybrid=self.config.hybrid
            )
            enriched = [self._with_context(r, hits=h) for r, h in zip(records, hits, strict=True)]
            sources = [
                [
                    {
                        "number": n + 1,
                        "source": x.source,
                        "span": list(x.span),
                        "score": x.score,
                        "text": x.text,
                    }
                    for n, x in enumerate(h)
                ]
                for h in hits
            ]
        if self.config.demonstrations:
            neighbours = self._memory().search_many(queries, k=self.config.top_k)
            field, label = self.task.text_fields[0], self.task.label_field
            enriched = [
                {
                    **r,
                    "demonstrations": [
                        {field: h.text, label: h.metadata["label"]} for h in reversed(found)
                    ],
                }
                for r, found in zip(enriched, neighbours, strict=True)
            ]
        assert self.base_ is not None
        predictions = self.base_.predict(enriched)
        for prediction, used in zip(predictions, sources, strict=True):
            prediction.sources = used or None
        return predictions

    def _memory(self) -> Any:
        if self.memory_ is None:
            raise ConfigError("This retrieval adapter has no labelled examples: call fit(train).")
        return self.memory_

    def _vote(self, neighbours: list[list[Any]]) -> list[Prediction]:
        labels = self.task.labels
        predictions = []
        for hits in neighbours:
            weights = dict.fromkeys(labels, 1e-9)
            for hit in hits:
                weights[hit.metadata["label"]] += math.exp(
                    (hit.score - 1.0) / self.config.temperature
                )
            total = sum(weights.values())
            scores = {label: weights[label] / total for label in labels}
            best = max(labels, key=scores.__getitem__)
            predictions.append(
                Prediction(
                    label=best,
                    scores=scores,
                    sources=[
                        {"source": h.source, "score": h.score, "label": h.metadata["label"]}
                        for h in hits
                    ],
                )
            )
        return predictions

    def _state_bytes(self) -> int:
        parts = [self.knowledge_, self.memory_]
        size = sum(part.nbytes() for part in parts if part is not None)
        return size + (self.base_.artifact_bytes() if self.base_ is not None else 0)

    def _save(self, directory: Path) -> None:
        if self.knowledge_ is not None:
            self.knowledge_.save(directory / "knowledge")
        if self.memory_ is not None:
            self.memory_.save(directory / "memory")
        if self.base_ is not None:
            self.base_.save(directory / "base")

    def _load(self, directory: Path, manifest: dict[str, Any]) -> None:
        from promptkit.adapters import load_adapter
        from promptkit.knowledge import KnowledgeBase

        if (directory / "knowledge").is_dir():
            self.knowledge_ = KnowledgeBase.load(directory / "knowledge")
        if (directory / "memory").is_dir():
            self.memory_ = KnowledgeBase.load(directory / "memory")
        if (directory / "base").is_dir():
            self.base_ = load_adapter(directory / "base")
