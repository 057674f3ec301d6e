"""Retrieval and rerank tasks: an embedder or a cross-encoder trained on (query, passage) pairs.

The ``full`` and ``lora`` adapters hand a retrieval or rerank task to :class:`PairTraining`,
which trains on sentence-transformers' own trainers and losses:

- retrieval: a bi-encoder (``SentenceTransformer``) with MultipleNegativesRankingLoss, so every
  other passage in a batch is a negative, plus ``hard_negatives`` mined per query;
- rerank: a ``CrossEncoder`` (one relevance logit) with binary cross-entropy on each query's
  passage and its mined hard negatives.

Hard negatives are the passages the untrained model ranks highest for the query that are not
the answer, mined from ``negatives_from`` (a knowledge base: every chunk of the positive's own
section (its heading, else its document) is kept out, so other chunks of the right answer are never
taught as wrong) or else from the other training passages. The trained model is saved as a plain
sentence-transformers folder (LoRA merged in), usable as ``embedder=`` or ``rerank=`` anywhere.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from promptkit import models
from promptkit.adapters.base import FitResult, Prediction
from promptkit.devices import resolve_device
from promptkit.errors import ConfigError
from promptkit.task import Task

PROBE_ROWS = 16


class PairTraining:
    """Fit, score, save and load for a retrieval or rerank task (see the module docstring)."""

    def __init__(self, task: Task, config: Any, lora: dict[str, Any] | None = None) -> None:
        self.task = task
        self.config = config
        self.lora = lora  # peft LoRA settings, or None for every weight
        self.model: Any = None
        self.trained = False  # weights changed by fit (or loaded): no longer the named model's

    @property
    def cross(self) -> bool:
        return self.task.kind == "rerank"

    # ---- model --------------------------------------------------------------------------------

    def _load(self, source: str) -> Any:
        device = str(resolve_device(self.config.device))
        if self.cross:
            from sentence_transformers.cross_encoder import CrossEncoder

            model = CrossEncoder(source, num_labels=1, device=device)
        else:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(source, device=device)
        model.max_seq_length = min(self.config.max_length, model.max_seq_length or 512)
        return model

    def _attach_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        assert self.lora is not None
        body = self._body()
        config = LoraConfig(
            r=self.lora["r"],
            lora_alpha=self.lora["alpha"],
            lora_dropout=self.lora["lora_dropout"],
            target_modules=self.lora["target_modules"] or _attention_projections(body),
            modules_to_save=["classifier"] if self.cross else None,  # the new ranking head trains
        )
        self._set_body(get_peft_model(body, config))

    def _merge_lora(self) -> None:
        body = self._body()
        if hasattr(body, "merge_and_unload"):
            self._set_body(body.merge_and_unload())

    def _body(self) -> Any:
        return self.model[0].model  # the transformers model inside the first module

    def _set_body(self, body: Any) -> None:
        self.model[0].model = body

    # ---- training -----------------------------------------------------------------------------

    def fit(self, train: list[dict[str, Any]], eval_data: list[dict[str, Any]] | None) -> FitResult:
        from datasets import Dataset

        if not self.config.model:
            raise ConfigError("Training a retrieval or rerank model needs model=... .")
        if self.model is None:
            self.model = self._load(models.resolve(self.config.model))
        queries = [self.task.query(r) for r in train]
        positives = [str(r[self.task.target_field]) for r in train]
        negatives = self._mine(queries, positives)
        rows = self._rows(queries, positives, negatives)
        dataset = Dataset.from_list(rows)
        probe = Dataset.from_list(rows[:PROBE_ROWS])
        evaluation = None
        if eval_data:
            eval_queries = [self.task.query(r) for r in eval_data]
            eval_positives = [str(r[self.task.target_field]) for r in eval_data]
            evaluation = Dataset.from_list(
                self._rows(eval_queries, eval_positives, self._mine(eval_queries, eval_positives))
            )
        if self.lora is not None:
            self._attach_lora()
        scratch = Path(tempfile.mkdtemp(prefix="promptkit-pairs-"))
        try:
            trainer = self._trainer(dataset, evaluation, scratch)
            initial = trainer.evaluate(probe)["eval_loss"]
            trainer.train()
            final = trainer.evaluate(probe)["eval_loss"]
            history = list(trainer.state.log_history)
            eval_metrics = {}
            if evaluation is not None:
                found = trainer.evaluate(evaluation)
                eval_metrics = {k[5:]: v for k, v in found.items() if k.startswith("eval_")}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        trainable = sum(p.numel() for p in self._body().parameters() if p.requires_grad)
        if self.lora is not None:
            self._merge_lora()  # a plain model from here on: saved and loaded as any other
        total = sum(p.numel() for p in self._body().parameters())
        self.model.eval()
        self.trained = True
        return FitResult(
            train_loss=float(final),
            initial_loss=float(initial),
            eval_metrics=eval_metrics,
            history=history,
            trainable_params=trainable,
            total_params=total,
        )

    def _rows(
        self, queries: list[str], positives: list[str], negatives: list[list[str]]
    ) -> list[dict[str, Any]]:
        if self.cross:  # one labelled pair per passage: the answer 1, each hard negative 0
            rows = []
            for query, positive, wrong in zip(queries, positives, negatives, strict=True):
                rows.append({"query": query, "passage": positive, "label": 1.0})
                rows += [{"query": query, "passage": n, "label": 0.0} for n in wrong]
            return rows
        count = min((len(n) for n in negatives), default=0)  # every row needs the same columns
        return [
            {"anchor": q, "positive": p, **{f"negative_{i + 1}": n[i] for i in range(count)}}
            for q, p, n in zip(queries, positives, negatives, strict=True)
        ]

    def _trainer(self, dataset: Any, evaluation: Any, out: Path) -> Any:
        config = self.config
        common = {
            "output_dir": str(out),
            "num_train_epochs": config.epochs,
            "per_device_train_batch_size": config.batch_size,
            "per_device_eval_batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "weight_decay": config.weight_decay,
            "warmup_ratio": config.warmup_ratio,
            "lr_scheduler_type": config.lr_scheduler,
            "max_grad_norm": config.max_grad_norm,
            "logging_steps": config.logging_steps,
            "seed": config.seed,
            "data_seed": config.seed,
            "save_strategy": "no",
            "report_to": list(config.report_to) or "none",
            "disable_tqdm": False,
            "use_cpu": str(resolve_device(config.device)) == "cpu",
        }
        if self.cross:
            from sentence_transformers.cross_encoder import (
                CrossEncoderTrainer,
                CrossEncoderTrainingArguments,
            )
            from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

            loss = BinaryCrossEntropyLoss(self.model)
            return CrossEncoderTrainer(
                model=self.model,
                args=CrossEncoderTrainingArguments(**common),
                train_dataset=dataset,
                eval_dataset=evaluation,
                loss=loss,
            )
        from sentence_transformers import SentenceTransformerTrainer
        from sentence_transformers.sentence_transformer.losses import (
            MultipleNegativesRankingLoss,
        )
        from sentence_transformers.sentence_transformer.training_args import (
            BatchSamplers,
            SentenceTransformerTrainingArguments,
        )

        args = SentenceTransformerTrainingArguments(
            **common,
            batch_sampler=BatchSamplers.NO_DUPLICATES,  # no false in-batch negatives
        )
        return SentenceTransformerTrainer(
            model=self.model,
            args=args,
            train_dataset=dataset,
            eval_dataset=evaluation,
            loss=MultipleNegativesRankingLoss(self.model),
        )

    # ---- hard negatives -----------------------------------------------------------------------

    def _mine(self, queries: list[str], positives: list[str]) -> list[list[str]]:
        """For each query, the ``hard_negatives`` passages the current model ranks highest
        outside the positive's own section."""
        count = self.config.hard_negatives
        if count == 0:
            return [[] for _ in queries]
        texts, sections, stored = self._corpus(positives)
        encode = self._embedding_model()
        corpus = _normalized(stored if stored is not None else encode(texts))
        query_vectors = _normalized(encode(queries))
        positive_vectors = _normalized(encode(positives))
        text_index = {t: i for i, t in enumerate(texts)}
        out = []
        for query, positive, pos_vector in zip(
            query_vectors, positives, positive_vectors, strict=True
        ):
            home = text_index.get(positive)
            if home is None:  # the positive is not a corpus passage: its nearest one is its home
                home = int(np.argmax(corpus @ pos_vector))
            order = np.argsort(-(corpus @ query))
            wrong = [texts[i] for i in order if sections[i] != sections[home]][:count]
            out.append(wrong)
        return out

    def _corpus(self, positives: list[str]) -> tuple[list[str], list[Any], np.ndarray | None]:
        """Passages to mine from, the section of each, and their vectors when the knowledge
        base already holds them from the embedder mining ranks with (none are recomputed)."""
        source = self.config.negatives_from
        if source is None:
            texts = list(dict.fromkeys(positives))
            return texts, texts, None  # each training passage is its own section
        from promptkit.knowledge import KnowledgeBase
        from promptkit.knowledge.embedder import fingerprint

        kb = source if isinstance(source, KnowledgeBase) else KnowledgeBase.load(source)
        ids, texts = kb.store.all_texts()
        rows = kb.store.fetch(ids)
        # a section is a heading (wherever it is: excluding a few extra is harmless), else a
        # whole document
        sections = [rows[i]["metadata"].get("heading") or rows[i]["source"] for i in ids]
        # a retriever mines with its own weights: the stored vectors are theirs before training
        ranker = self.config.negatives_embedder if self.cross else self.config.model
        untrained = self.cross or not self.trained
        same = kb.embedder_fingerprint is not None and kb.embedder_fingerprint == fingerprint(
            ranker
        )
        stored = kb.store.vectors(ids) if untrained and same and ids else None
        return list(texts), sections, stored

    def _embedding_model(self) -> Any:
        """What mining ranks with: the model itself, or (reranker) the default embedder."""
        if not self.cross:
            return lambda texts: self.model.encode(
                texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False
            )
        from promptkit.knowledge.embedder import get_embedder

        embedder = get_embedder(self.config.negatives_embedder, self.config.device)
        return lambda texts: embedder.encode(texts, progress=False)

    # ---- prediction and persistence -----------------------------------------------------------

    def predict(self, records: list[dict[str, Any]]) -> list[Prediction]:
        """A relevance score per (query, passage) record: cosine similarity for an embedder,
        the cross-encoder's probability for a reranker."""
        from promptkit.errors import DataError

        field = self.task.target_field
        missing = [i for i, r in enumerate(records) if r.get(field) is None]
        if missing:
            raise DataError(
                f"Scoring needs field {field!r} (the passage) in every record; example "
                f"{missing[0]} lacks it."
            )
        queries = [self.task.query(r) for r in records]
        passages = [str(r[field]) for r in records]
        size = self.config.batch_size
        if self.cross:
            scores = self.model.predict(
                list(zip(queries, passages, strict=True)), batch_size=size, show_progress_bar=False
            )
        else:
            q = self.model.encode(queries, batch_size=size, normalize_embeddings=True)
            p = self.model.encode(passages, batch_size=size, normalize_embeddings=True)
            scores = (np.asarray(q) * np.asarray(p)).sum(axis=1)
        return [Prediction(scores={"score": float(s)}) for s in np.asarray(scores).reshape(-1)]

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(str(directory / "model"))

    def load(self, directory: Path) -> None:
        self.model = self._load(str(directory / "model"))
        self.model.eval()
        self.trained = True

    def state_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self._body().parameters())


def _normalized(vectors: Any) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def _attention_projections(model: Any) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for choice in (["query", "value"], ["q_proj", "v_proj"], ["q_lin", "v_lin"]):
        if set(choice) <= names:
            return choice
    raise ConfigError("Could not find attention projections for LoRA; set target_modules=[...].")


__all__ = ["PairTraining"]
