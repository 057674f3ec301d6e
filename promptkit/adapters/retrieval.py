"""The "retrieval" adapter: knowledge injection around any adapter.

The top-k passages for each input are put in the template's context slot (``passages``,
numbered for citation) and the base adapter predicts; predictions carry the sources and scores.
No weights change unless the base trains: then ``fit`` trains it on each training record with
its retrieved passages (retrieval-augmented fine-tuning; ``gold_field`` follows RAFT's recipe of
keeping the gold passage among distractors only part of the time). With ``demonstrations=N`` the
N nearest labelled training examples (every text field) also become the base ``prompt``
adapter's few-shot demonstrations. A saved adapter references a saved knowledge base by path
(and carries an in-memory one), with the base adapter's own artifact inside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from promptkit.adapters.base import Adapter, AdapterConfig, FitResult, Prediction
from promptkit.adapters.knn import ExampleMemory, query_text
from promptkit.errors import ArtifactError, ConfigError


class RetrievalConfig(AdapterConfig):
    base: Any = Field(None, exclude=True, description="The adapter that receives the passages.")
    knowledge: Any = Field(None, exclude=True, description="A KnowledgeBase, or its directory.")
    top_k: int = Field(4, ge=1, le=1000, description="Passages per input.")
    filter: dict[str, Any] | None = Field(None, description="Metadata filter for every search.")
    hybrid: bool | dict[str, float] = Field(
        False,
        description="Fuse BM25 with dense search: true, or fusion settings "
        "{dense_weight, sparse_weight, rrf_k} (tune them with promptkit.knowledge.tune_fusion).",
    )
    distinct: str | None = Field(
        None,
        description='Give top_k passages with different values of this key ("source" or a '
        'metadata field such as "heading"): the best chunk of each, not several of one.',
    )
    rerank: Any = Field(
        None,
        exclude=True,
        description="A fitted rerank adapter (cross-encoder) or its saved directory: reorders "
        "the `candidates` best dense (or hybrid) hits before the top_k are kept.",
    )
    rerank_weight: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Weight of the reranker's score against the first stage's (1: reranker "
        "alone); choose it on validation with promptkit.knowledge.tune_rerank_weight.",
    )
    candidates: int | None = Field(
        None, ge=1, description="Hits reranking and fusion start from (default 4 * top_k)."
    )
    context_field: str = Field("passages", description="Template variable for the passages.")
    demonstrations: int = Field(
        0,
        ge=0,
        le=64,
        description="Nearest labelled training examples given to the base "
        "prompt adapter as its demonstrations (0: none).",
    )
    embedder: str = Field("minilm", description="Embedder for the demonstration memory.")
    gold_field: str | None = Field(
        None,
        description="Field of a training record naming its gold passage. With it, fitting "
        "follows RAFT (Zhang et al., 2024): each training question sees its retrieved "
        "passages with the gold one kept among them with probability gold_probability, and "
        "removed (distractors only) otherwise.",
    )
    gold_key: str = Field(
        "heading", description="Passage metadata key that the gold_field values match."
    )
    gold_probability: float = Field(
        0.8, ge=0, le=1, description="Chance that a training question sees its gold passage."
    )
    cite: bool = Field(
        False,
        description="When fitting a generation task with gold_field, a training answer whose "
        "passages include the gold one ends with its citation ([n]), so the reader learns to "
        "cite what it used (answer metrics ignore these markers; citation_accuracy scores "
        "them). Off by default: on python_faq validation it cost answer token F1 (0.527 "
        "against 0.610) for a citation accuracy of 0.417.",
    )
    gold_position: Literal["retrieved", "random"] = Field(
        "retrieved",
        description="Where a kept gold passage sits among the distractors: 'retrieved' keeps "
        "the retriever's order (the gold passage at its own rank, or last if retrieval missed "
        "it), as prediction will see it; 'random' puts it anywhere, as RAFT does.",
    )

    @model_validator(mode="before")
    @classmethod
    def _task_from_base(cls, data: Any) -> Any:
        base = data.get("base") if isinstance(data, dict) else None
        if isinstance(base, Adapter) and data.get("task") is None:
            data = {**data, "task": base.task}
        return data


class RetrievalAdapter(Adapter):
    """Retrieval-based knowledge injection (and retrieved demonstrations) around any adapter."""

    name = "retrieval"
    Config: ClassVar[type[AdapterConfig]] = RetrievalConfig
    trains = False
    config: RetrievalConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.base_: Adapter | None = self.config.base
        self.knowledge_: Any = self._as_knowledge(self.config.knowledge)
        self.memory_: ExampleMemory | None = None
        self.reranker_: Any = self.config.rerank

    @classmethod
    def create(cls, **settings: Any) -> Adapter:
        adapter = super().create(**settings)
        assert isinstance(adapter, RetrievalAdapter)
        config = adapter.config
        if adapter.base_ is None:
            raise ConfigError(
                "The retrieval adapter needs base=<adapter> to receive the passages; to classify "
                "by nearest neighbours alone, use the 'knn' adapter."
            )
        if adapter.knowledge_ is None and not config.demonstrations:
            raise ConfigError(
                "Pass knowledge=<KnowledgeBase or directory> to inject passages, or "
                "demonstrations=N to retrieve few-shot examples."
            )
        if config.demonstrations and getattr(adapter.base_.config, "shots", 0) < 1:
            raise ConfigError(
                f"demonstrations={config.demonstrations} needs a base 'prompt' adapter with "
                f"shots >= 1 (it has {getattr(adapter.base_.config, 'shots', 0)})."
            )
        return adapter

    @property
    def learns(self) -> bool:
        return self.base_ is not None and self.base_.learns

    def api_usage(self) -> dict[str, float] | None:
        return self.base_.api_usage() if self.base_ is not None else None

    def clone(self, **overrides: Any) -> Adapter:
        """A new, unfitted copy; the base adapter is copied too, the knowledge base shared."""
        base = self.base_.clone(**overrides) if self.base_ is not None else None
        return super().clone(
            **overrides, base=base, knowledge=self.knowledge_, rerank=self.reranker_
        )

    @staticmethod
    def _as_knowledge(value: Any) -> Any:
        if value is None or not isinstance(value, (str, Path)):
            return value
        from promptkit.knowledge import KnowledgeBase

        return KnowledgeBase.load(value)

    # ---- hooks --------------------------------------------------------------------------------

    def _fit(
        self,
        train: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None,
        *,
        resume: bool,
        run_dir: Path | None,
    ) -> FitResult:
        assert self.base_ is not None
        if self.config.demonstrations:
            self.memory_ = ExampleMemory.build(
                self.task, train, self.config.embedder, self.config.device
            )
        if self.knowledge_ is not None and self.config.gold_field:
            base_train = self._with_gold(train)
        else:
            base_train = [self._with_context(r) for r in train]
        # evaluation sees passages exactly as prediction will: retrieved, no gold forced in
        base_eval = [self._with_context(r) for r in eval_data] if eval_data else None
        return self.base_.fit(base_train, base_eval)

    def _with_gold(self, train: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Training records with passages chosen the RAFT way (see ``gold_field``)."""
        import random

        field, key, k = self.config.gold_field, self.config.gold_key, self.config.top_k
        assert field is not None
        rng = random.Random(self.config.seed)
        queries = [query_text(self.task, r) for r in train]
        options = self._search_options()
        if options["candidates"] is not None:
            options["candidates"] = max(options["candidates"], k + 2)
        found = self.knowledge_.search_many(queries, k=k + 2, **options)
        out = []
        for record, query, hits in zip(train, queries, found, strict=True):
            gold_value = record.get(field)
            distractors = [h for h in hits if h.metadata.get(key) != gold_value]
            passages = distractors[:k]
            if gold_value is not None and rng.random() < self.config.gold_probability:
                rank = next(
                    (i for i, h in enumerate(hits) if h.metadata.get(key) == gold_value), None
                )
                gold = (
                    [hits[rank]]
                    if rank is not None
                    else self.knowledge_.search(query, k=1, filter={key: gold_value})
                )
                if gold and self.config.gold_position == "random":
                    passages = distractors[: k - 1]  # anywhere: no position to learn
                    passages.insert(rng.randint(0, len(passages)), gold[0])
                elif gold:  # the retriever's order; a gold passage it ranked past k comes last
                    passages = distractors[: k - 1]
                    passages.insert(min(rank if rank is not None else k, k - 1), gold[0])
            row = {**record, self.config.context_field: [h.to_dict() for h in passages]}
            cited = [n + 1 for n, h in enumerate(passages) if h.metadata.get(key) == gold_value]
            target = self.task.target_field
            if self.config.cite and cited and self.task.kind == "generation" and row.get(target):
                row[target] = f"{str(row[target]).rstrip()} [{cited[0]}]"
            out.append(row)
        return out

    def _search_options(self) -> dict[str, Any]:
        config = self.config
        return {
            "filter": config.filter,
            "hybrid": config.hybrid,
            "distinct": config.distinct,
            "rerank": self.reranker_ or False,
            "candidates": config.candidates,
            "rerank_weight": config.rerank_weight,
        }

    def _with_context(
        self, record: dict[str, Any], hits: list[Any] | None = None
    ) -> dict[str, Any]:
        if self.knowledge_ is None or self.config.context_field in record:
            return record
        if hits is None:
            hits = self.knowledge_.search(
                query_text(self.task, record), k=self.config.top_k, **self._search_options()
            )
        return {**record, self.config.context_field: [h.to_dict() for h in hits]}

    def _predict(self, records: list[dict[str, Any]]) -> list[Prediction]:
        assert self.base_ is not None
        queries = [query_text(self.task, r) for r in records]
        enriched = records
        sources: list[list[dict[str, Any]]] = [[] for _ in records]
        if self.knowledge_ is not None:
            hits = self.knowledge_.search_many(
                queries, k=self.config.top_k, **self._search_options()
            )
            enriched = [self._with_context(r, h) for r, h in zip(records, hits, strict=True)]
            sources = [
                [
                    {
                        "number": n + 1,
                        "source": x.source,
                        "span": list(x.span),
                        "score": x.score,
                        "text": x.text,
                        "metadata": x.metadata,
                    }
                    for n, x in enumerate(h)
                ]
                for h in hits
            ]
        if self.memory_ is not None:
            neighbours = self.memory_.nearest(queries, self.config.demonstrations)
            label = self.task.label_field
            enriched = [
                {
                    **r,
                    # nearest last: the closest example sits right before the input
                    "demonstrations": [
                        {**e["fields"], label: e["label"]} for e, _ in reversed(found)
                    ],
                }
                for r, found in zip(enriched, neighbours, strict=True)
            ]
        predictions = self.base_.predict(enriched)
        for prediction, used in zip(predictions, sources, strict=True):
            prediction.sources = used or None
        return predictions

    def _state_bytes(self) -> int:
        carried = self.knowledge_ is not None and self.knowledge_.path is None  # else referenced
        size = self.knowledge_.nbytes() if carried else 0
        size += self.memory_.nbytes() if self.memory_ is not None else 0
        if self.reranker_ is not None and not isinstance(self.reranker_, (str, Path)):
            size += self.reranker_.artifact_bytes()
        return size + (self.base_.artifact_bytes() if self.base_ is not None else 0)

    def _save(self, directory: Path) -> None:
        if self.knowledge_ is not None and self.knowledge_.path is not None:
            # a saved knowledge base is referenced, not copied (it may be gigabytes)
            reference = {"path": str(Path(self.knowledge_.path).resolve())}
            (directory / "knowledge.json").write_text(json.dumps(reference))
        elif self.knowledge_ is not None:  # in memory only: the adapter carries it
            self.knowledge_.save(directory / "knowledge")
        if self.memory_ is not None:
            self.memory_.save(directory / "memory")
        if isinstance(self.reranker_, (str, Path)):  # a directory or checkpoint: referenced
            reference = {"path": str(self.reranker_)}
            (directory / "reranker.json").write_text(json.dumps(reference))
        elif self.reranker_ is not None:
            self.reranker_.save(directory / "reranker")
        if self.base_ is not None:
            self.base_.save(directory / "base")

    def _load(self, directory: Path, manifest: dict[str, Any]) -> None:
        from promptkit.adapters import load_adapter
        from promptkit.knowledge import KnowledgeBase

        reference = directory / "knowledge.json"
        if reference.is_file():
            path = Path(json.loads(reference.read_text())["path"])
            if not (path / "manifest.json").is_file():
                raise ArtifactError(
                    f"{directory} uses the knowledge base at {path}, which is not there any more. "
                    "Restore it there, or load this adapter's base and wrap it again with "
                    "knowledge=<the knowledge base>."
                )
            self.knowledge_ = KnowledgeBase.load(path, device=self.config.device)
        elif (directory / "knowledge").is_dir():
            self.knowledge_ = KnowledgeBase.load(directory / "knowledge", device=self.config.device)
        if (directory / "memory").is_dir():
            self.memory_ = ExampleMemory.load(directory / "memory", self.task, self.config.device)
        if (directory / "reranker.json").is_file():
            self.reranker_ = json.loads((directory / "reranker.json").read_text())["path"]
        elif (directory / "reranker").is_dir():
            self.reranker_ = load_adapter(directory / "reranker")
        if (directory / "base").is_dir():
            self.base_ = load_adapter(directory / "base")
