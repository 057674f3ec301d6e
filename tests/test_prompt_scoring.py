"""Prompt scoring is exact: joint tokenization, word-count neutral labels, bounded memory,
calibration with each input's own demonstrations, prompts fitted without cutting their ends."""

from __future__ import annotations

import pytest
import torch

import promptkit as pk
from promptkit.templates import Template, TruncationStats

PROMPTS = [
    "Review: a good film with fine acting\nSentiment:",
    "Review: bad\nSentiment:",
    "Review: the plot was a mess and the acting was dull and long\nSentiment: neg",
]
WORDS = [" great", " terrible film", "ative", " fine good great", "!"]


def full_pass_scores(adapter, prompts, words):
    """The reference: one plain forward pass over prompt + word, summing the word's tokens."""
    tokenizer, model = adapter._tokenizer, adapter._model
    out = []
    for prompt in prompts:
        row = []
        for word in words:
            encoded = tokenizer(prompt + word, return_offsets_mapping=True,
                                add_special_tokens=not adapter._uses_chat())
            ids = encoded["input_ids"]
            start = next(i for i, (a, b) in enumerate(encoded["offset_mapping"])
                         if b > len(prompt) or (a >= len(prompt) and b > a))
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([ids])).logits[0]
            logprobs = torch.log_softmax(logits.float(), -1)
            total = sum(logprobs[t - 1, ids[t]].item() for t in range(start, len(ids)))
            row.append(total)
        out.append(row)
    return out


def make(tiny_gpt2, **settings):
    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    adapter = pk.create_adapter("prompt", model=tiny_gpt2, task=task, chat=False, **settings)
    adapter._ensure_model()
    return adapter


def test_multi_token_words_equal_a_full_forward_pass(tiny_gpt2):
    adapter = make(tiny_gpt2, scoring="sum", batch_size=3)
    # "ative" merges with the prompt's "neg": its tokens come from the joint encoding
    found = adapter._score_causal(PROMPTS, WORDS)
    expected = full_pass_scores(adapter, PROMPTS, WORDS)
    for got, want in zip(found, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    lengths = [len(adapter._tokenizer(w, add_special_tokens=False)["input_ids"]) for w in WORDS]
    assert max(lengths) >= 3, "the check needs multi-token words"


def test_a_label_with_more_words_gains_nothing(tiny_gpt2):
    template = Template.from_string(
        "{# ---\ntask: classification\nverbalizer: {a: [good, good, good], b: [good]}\n--- #}\n"
        "Text: {{ text }}\nAnswer:")
    task = pk.Task.classification(["a", "b"], template=str(_write(template)))
    adapter = pk.create_adapter("prompt", model=tiny_gpt2, task=task, chat=False)
    adapter.fit([{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    scores = adapter.predict(["an uninformative input"])[0].scores
    assert scores["a"] == pytest.approx(0.5, abs=1e-6) == scores["b"]
    summed = pk.create_adapter("prompt", model=tiny_gpt2, task=task, chat=False, aggregate="sum")
    summed.fit([{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    assert summed.predict(["an uninformative input"])[0].scores["a"] == pytest.approx(0.75, 1e-6)


def _write(template):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "three_words.j2"
    path.write_text(template.source)
    return path


def test_scoring_memory_is_bounded_by_batch_size(tiny_gpt2):
    eight = Template.from_string(
        "{# ---\ntask: classification\nverbalizer: {negative: [terrible film, bad movie, awful, "
        "meh], positive: [great, fine, good, ok]}\n--- #}\nReview: {{ text }}\nSentiment:")
    task = pk.Task.classification(["negative", "positive"], template=str(_write(eight)))
    adapter = pk.create_adapter("prompt", model=tiny_gpt2, task=task, chat=False, batch_size=16)
    adapter._ensure_model()
    assert len(adapter._label_words()) == 8
    rows_seen = []
    hook = adapter._model.register_forward_pre_hook(
        lambda module, args, kwargs: rows_seen.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True)
    try:
        adapter._score_all([f"Review: film number {i}\nSentiment:" for i in range(16)])
        small = max(rows_seen)
        rows_seen.clear()
        adapter._score_all([f"Review: film number {i}\nSentiment:" for i in range(64)])
        large = max(rows_seen)
    finally:
        hook.remove()
    # 64 prompts x 8 words = 512 (prompt, word) rows, yet no pass runs more than 16 rows:
    # the memory of 16 prompts x 8 words
    assert large == small == 16


def test_calibration_uses_each_inputs_demonstrations(tiny_gpt2, toy_data):
    adapter = make(tiny_gpt2, shots=2, calibrate=True)
    adapter.fit(toy_data)
    scored: list[list[str]] = []
    original = adapter._score_all

    def spy(prompts):
        scored.append(list(prompts))
        return original(prompts)

    adapter._score_all = spy
    adapter.predict(toy_data[:2])
    *priors, inputs = scored  # the priors are measured first
    assert len(priors) == 2
    for prompt, prior_prompts in zip(inputs, priors, strict=True):
        demos = prompt.split("\n\n")[:-1]  # the demonstrations this input saw
        assert demos and all(p.split("\n\n")[:-1] == demos for p in prior_prompts)


def test_long_prompt_keeps_chat_header_and_answer_slot(tiny_gpt2):
    adapter = make(tiny_gpt2, max_length=40)
    adapter.config.chat = True
    adapter._tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        prompt = adapter.prompts([{"text": " ".join(["good film"] * 200)}])[0]
        assert prompt.startswith("<|user|>Review: good film")
        assert prompt.endswith("Answer:<|assistant|>")
        assert adapter._count(prompt) <= adapter._input_budget()
        scores = adapter.predict([" ".join(["good film"] * 200)])[0].scores
        assert sum(scores.values()) == pytest.approx(1.0)
    finally:
        adapter._tokenizer.chat_template = None


def test_passages_are_dropped_by_rank_before_the_question_is_cut():
    template = pk.templates.load_template("rag_qa")
    passages = [{"text": f"passage {i} " + "word " * 20} for i in range(5)]
    question = "how long is the river " * 3

    def count(text):
        return len(text.split())

    budget = count(template.render({"question": question, "passages": passages[:2]}))
    stats = TruncationStats()
    fitted = template.render_fitted({"question": question, "passages": passages}, count, budget,
                                    stats)
    assert "passage 0" in fitted and "passage 1" in fitted and "passage 2" not in fitted
    assert question.strip() in fitted  # the question is whole
    tight = template.render_fitted({"question": question, "passages": passages}, count, 12)
    assert "passage" not in tight and tight.startswith("Question: how long")
