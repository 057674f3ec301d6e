"""Packed classification: short inputs share a row instead of being padded to the longest.

A batch of inputs in arrival order (a server's batch) mixes short and long texts; padded, most
of its compute goes to padding, and cutting it into length groups costs extra forward passes.
Packed, several inputs sit side by side in one row, each with its own position ids and a
block-diagonal attention mask, so no input sees another and the matrix products run over real
tokens only. Each input's first token is then pooled and classified as usual.

Packing needs to know where a model family keeps its encoder, where its positions start and how
its head reads the first token; :data:`FAMILIES` names the ones that are known. The first packed
batch of every model is also computed padded, and packing is turned off for that model (with a
warning) unless the two agree, so an unexpected variant costs one check, never a wrong answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# Rows are at least this many tokens wide: wider rows make attention (quadratic in the row)
# cost more than the padding they save. Measured with MiniLM on 2 CPU cores, batches of 32
# Rotten Tomatoes reviews in arrival order: 96 → 255 reviews/s, 128 → 248, longest input
# (~60) → 243; padded length groups 195; sorted and padded (the offline predict) 261.
MIN_ROW_TOKENS = 96

# Pack a batch only when padding it would waste this share of its compute or more (a batch
# sorted by length, as predict makes them, pads little and runs faster padded).
WASTE_TO_PACK = 0.2

TOLERANCE = 1e-3  # largest difference in logits accepted between packed and padded


@dataclass(frozen=True)
class Family:
    """Where a model family keeps its encoder and how its classification head is fed."""

    encoder: str  # attribute holding the base model
    first_position: Callable[[Any], int]  # position id of each input's first token
    classify: Callable[[Any, Any], Any]  # (model, first-token states [n, hidden]) -> logits


def _bert_classify(model: Any, first: Any) -> Any:
    pooled = model.bert.pooler(first[:, None, :]) if model.bert.pooler is not None else first
    return model.classifier(model.dropout(pooled))


def _roberta_classify(model: Any, first: Any) -> Any:
    return model.classifier(first[:, None, :])


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", lambda config: 0, _bert_classify),
    "roberta": Family("roberta", lambda config: config.pad_token_id + 1, _roberta_classify),
    "xlm-roberta": Family("roberta", lambda config: config.pad_token_id + 1, _roberta_classify),
}


def _unwrapped(model: Any) -> Any | None:
    """The transformers model under a PEFT wrapper whose weights change but whose inputs do
    not (LoRA and the like); ``None`` for prompt learning, which adds virtual tokens."""
    config = getattr(model, "peft_config", None)
    if config is None:
        return model
    if any(c.is_prompt_learning for c in config.values()):
        return None
    return model.base_model.model


class Packer:
    """Packs batches for one model, once the first packed batch has matched the padded one."""

    def __init__(self, model: Any) -> None:
        self.source = model
        inner = _unwrapped(model)
        config = getattr(inner, "config", None)
        self.family = FAMILIES.get(getattr(config, "model_type", ""))
        if self.family is not None and not hasattr(inner, self.family.encoder):
            self.family = None
        self.model = inner
        self.checked = False

    @property
    def usable(self) -> bool:
        return self.family is not None

    def worth_it(self, rows: list[dict[str, Any]]) -> bool:
        """Whether padding ``rows`` would waste enough compute to pack them instead."""
        if not self.usable or len(rows) < 2:
            return False
        lengths = [len(r["input_ids"]) for r in rows]
        padded = len(lengths) * max(lengths)
        return (padded - sum(lengths)) / padded >= WASTE_TO_PACK

    def logits(self, rows: list[dict[str, Any]], padded: Callable[[], Any]) -> Any:
        """Logits for ``rows`` (one per row, in order); ``padded()`` computes them the usual
        way, for the first batch's check."""
        assert self.family is not None
        packed = packed_logits(self.model, self.family, rows)
        if not self.checked:
            self.checked = True
            reference = padded()
            gap = float((packed.float() - reference.float()).abs().max())
            if gap > TOLERANCE:
                logger.warning(
                    "Packed inputs disagree with padded ones by %.2g for this model "
                    "(%s); predicting with padded batches from now on.",
                    gap,
                    type(self.model).__name__,
                )
                self.family = None
                return reference
        return packed


def bins(lengths: list[int], width: int) -> list[list[int]]:
    """First-fit decreasing: indices grouped into rows of at most ``width`` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for k, left in enumerate(room):
            if left >= lengths[i]:
                rows[k].append(i)
                room[k] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(width - lengths[i])
    return rows


def packed_logits(model: Any, family: Family, rows: list[dict[str, Any]]) -> Any:
    import torch

    from promptkit.devices import model_device

    lengths = [len(r["input_ids"]) for r in rows]
    width = max(max(lengths), MIN_ROW_TOKENS)
    groups = bins(lengths, width)
    width = max(sum(lengths[i] for i in g) for g in groups)  # no wider than the fullest row
    shape = (len(groups), width)
    ids = torch.full(shape, model.config.pad_token_id or 0, dtype=torch.long)
    types = torch.zeros(shape, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    segment = torch.full(shape, -1, dtype=torch.long)  # which input a token belongs to
    first = [(0, 0)] * len(rows)  # (row, column) of each input's first token
    start_position = family.first_position(model.config)
    for k, group in enumerate(groups):
        at = 0
        for j, i in enumerate(group):
            n = lengths[i]
            ids[k, at : at + n] = torch.tensor(rows[i]["input_ids"])
            if "token_type_ids" in rows[i]:
                types[k, at : at + n] = torch.tensor(rows[i]["token_type_ids"])
            positions[k, at : at + n] = torch.arange(start_position, start_position + n)
            segment[k, at : at + n] = j
            first[i] = (k, at)
            at += n
    same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0)
    same |= torch.eye(width, dtype=torch.bool)  # a padding token attends to itself: no NaN
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(same.shape, dtype=dtype).masked_fill_(~same, torch.finfo(dtype).min)
    encoder = getattr(model, family.encoder)
    states = encoder(
        input_ids=ids.to(device),
        token_type_ids=types.to(device),
        position_ids=positions.to(device),
        attention_mask=mask[:, None].to(device),
    ).last_hidden_state
    where = torch.tensor(first, device=device)
    return family.classify(model, states[where[:, 0], where[:, 1]])
