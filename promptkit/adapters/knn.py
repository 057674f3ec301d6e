"""The "knn" adapter: classify by the votes of the nearest labelled training examples.

``fit`` embeds the training examples (every text field, joined) into an in-memory knowledge
base; ``predict`` finds the ``top_k`` nearest examples and weighs each one's label by its
similarity. A long example split into several chunks still casts one vote. The same example
memory gives the ``retrieval`` adapter its retrieved demonstrations.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from promptkit.adapters.base import Adapter, AdapterConfig, FitResult, Prediction
from promptkit.errors import ConfigError, NotFittedError
from promptkit.task import Task


class ExampleMemory:
    """Labelled examples indexed by their text fields; search returns whole examples."""

    def __init__(self, knowledge: Any, task: Task) -> None:
        self.knowledge, self.task = knowledge, task

    @classmethod
    def build(
        cls, task: Task, records: list[dict[str, Any]], embedder: str, device: str = "auto"
    ) -> ExampleMemory:
        from promptkit.knowledge import KnowledgeBase

        fields = task.text_fields
        rows = [
            {
                "text": query_text(task, record),
                "label": record.get(task.label_field),
                "fields": {f: record[f] for f in fields},
                "row": index,
                "source": f"example:{index}",
            }
            for index, record in enumerate(records)
        ]
        knowledge = KnowledgeBase.build(
            rows, embedder=embedder, chunking={"max_tokens": 512, "overlap": 0}, device=device
        )
        return cls(knowledge, task)

    def nearest(self, queries: list[str], k: int) -> list[list[tuple[dict[str, Any], float]]]:
        """Per query, up to ``k`` distinct examples (metadata, best chunk score), best first."""
        found = self.knowledge.search_many(queries, k=k, distinct="source")  # source = example
        return [[(hit.metadata, hit.score) for hit in hits] for hits in found]

    def nbytes(self) -> int:
        return int(self.knowledge.nbytes())

    def save(self, path: Path) -> None:
        self.knowledge.save(path)

    @classmethod
    def load(cls, path: Path, task: Task, device: str = "auto") -> ExampleMemory:
        from promptkit.knowledge import KnowledgeBase

        return cls(KnowledgeBase.load(path, device=device), task)


def query_text(task: Task, record: dict[str, Any]) -> str:
    """Every text field of a record, joined: what is embedded and what is searched with."""
    return "\n".join(str(record[f]) for f in task.text_fields)


class KnnConfig(AdapterConfig):
    embedder: str = Field("minilm", description="Sentence embedder for the example memory.")
    top_k: int = Field(10, ge=1, le=1000, description="Neighbours that vote.")
    temperature: float = Field(0.05, gt=0, description="Softness of the similarity-weighted vote.")


class KnnAdapter(Adapter):
    """k-nearest-neighbour classification over the embedded training examples."""

    name = "knn"
    Config: ClassVar[type[AdapterConfig]] = KnnConfig
    trains = False  # fit only records the examples
    config: KnnConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        if self.task.kind != "classification":
            raise ConfigError(
                "The knn adapter classifies; for generation use 'retrieval' with a base adapter."
            )
        self.memory_: ExampleMemory | None = None

    def _fit(
        self,
        train: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None,
        *,
        resume: bool,
        run_dir: Path | None,
    ) -> FitResult:
        self.memory_ = ExampleMemory.build(
            self.task, train, self.config.embedder, self.config.device
        )
        return FitResult()

    def _predict(self, records: list[dict[str, Any]]) -> list[Prediction]:
        if self.memory_ is None:
            raise NotFittedError(
                "This knn adapter has no labelled examples yet: call .fit(train_data) first, or "
                "load a fitted one with promptkit.load_adapter(path)."
            )
        queries = [query_text(self.task, r) for r in records]
        labels = self.task.labels
        predictions = []
        for neighbours in self.memory_.nearest(queries, self.config.top_k):
            weights = dict.fromkeys(labels, 1e-9)
            for example, score in neighbours:  # one vote per example
                weights[example["label"]] += math.exp((score - 1.0) / self.config.temperature)
            total = sum(weights.values())
            scores = {label: weights[label] / total for label in labels}
            predictions.append(
                Prediction(
                    label=max(labels, key=scores.__getitem__),
                    scores=scores,
                    sources=[
                        {"source": f"example:{e['row']}", "score": s, "label": e["label"]}
                        for e, s in neighbours
                    ],
                )
            )
        return predictions

    def _state_bytes(self) -> int:
        return self.memory_.nbytes() if self.memory_ is not None else 0

    def _save(self, directory: Path) -> None:
        if self.memory_ is None:
            raise NotFittedError("Fit this knn adapter before saving it: it has no examples yet.")
        self.memory_.save(directory / "memory")

    def _load(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.memory_ = ExampleMemory.load(directory / "memory", self.task, self.config.device)
