"""Packed classification: inputs of mixed lengths share rows and get the padded answer."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import promptkit as pk
from promptkit.adapters import packing

MIXED = [" ".join(["fine", "dull", "bright"][i % 3] for i in range(n)) for n in (1, 40, 3, 25, 2, 9)]


def fitted(kind, tiny_bert, sentiment_task, toy_data, **settings):
    adapter = pk.create_adapter(kind, model=tiny_bert, task=sentiment_task, epochs=1, **settings)
    adapter.fit(toy_data[:16])
    return adapter


def padded_logits(adapter, rows):
    inputs = adapter.tokenizer_.pad(rows, return_tensors="pt")
    with torch.inference_mode():
        return adapter.model_(**inputs).logits


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_packed_logits_match_padded_ones(kind, tiny_bert, sentiment_task, toy_data):
    adapter = fitted(kind, tiny_bert, sentiment_task, toy_data)
    adapter.model_.eval()
    rows = adapter.head_.encode([{"text": t} for t in MIXED], with_targets=False)
    packer = adapter.head_.packer(adapter.model_)
    assert adapter.packs_inputs and packer.worth_it(rows)
    with torch.inference_mode():
        packed = packing.packed_logits(packer.model, packer.family, rows)
    # several inputs really share a row
    assert len(packing.bins([len(r["input_ids"]) for r in rows], 96)) < len(rows)
    torch.testing.assert_close(packed, padded_logits(adapter, rows), atol=1e-5, rtol=1e-4)
    # predict packs this batch and answers as one input at a time does
    together = adapter.predict(MIXED)
    assert packer.checked and packer.usable
    for text, prediction in zip(MIXED, together, strict=True):
        alone = adapter.predict([text])[0]
        assert prediction.label == alone.label
        assert prediction.scores["positive"] == pytest.approx(alone.scores["positive"], abs=1e-5)


def test_prompt_tuning_is_never_packed(tiny_bert, sentiment_task, toy_data):
    adapter = fitted("prompt_tuning", tiny_bert, sentiment_task, toy_data, num_virtual_tokens=4)
    assert not adapter.packs_inputs  # its virtual tokens come before every input
    assert len(adapter.predict(MIXED)) == len(MIXED)


def test_a_packer_that_disagrees_falls_back_to_padding(
    tiny_bert, sentiment_task, toy_data, monkeypatch, caplog
):
    adapter = fitted("full", tiny_bert, sentiment_task, toy_data)
    adapter.model_.eval()
    wrong = packing.Family("bert", lambda config: 5, packing.FAMILIES["bert"].classify)
    monkeypatch.setitem(packing.FAMILIES, "bert", wrong)  # positions start at the wrong place
    packer = packing.Packer(adapter.model_)
    rows = adapter.head_.encode([{"text": t} for t in MIXED], with_targets=False)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        logits = packer.logits(rows, lambda: padded_logits(adapter, rows))
    assert "padded batches from now on" in caplog.text
    assert not packer.usable and not packer.worth_it(rows)
    torch.testing.assert_close(logits, padded_logits(adapter, rows))


@given(st.lists(st.integers(1, 64), min_size=1, max_size=40), st.integers(64, 160))
def test_bins_place_every_input_once_within_the_width(lengths, width):
    rows = packing.bins(lengths, width)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= width for row in rows)


def test_lanes_compute_batches_side_by_side():
    from promptkit.serve.batching import Batcher

    def observed(lanes):
        running, most = 0, 0

        def run(records):
            nonlocal running, most
            running += 1
            most = max(most, running)
            time.sleep(0.05)
            running -= 1
            return [r["text"].upper() for r in records]

        async def main():
            batcher = Batcher(run, lambda r: len(r["text"]), max_batch_size=1, max_wait_ms=0,
                              lanes=lanes)
            answers = await asyncio.gather(*(batcher.submit([{"text": f"r{i}"}]) for i in range(6)))
            await batcher.drain()
            batcher.close()
            return answers

        answers = asyncio.run(main())
        assert answers == [[f"R{i}"] for i in range(6)]
        return most

    assert observed(1) == 1
    assert observed(2) == 2
