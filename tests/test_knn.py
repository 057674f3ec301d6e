"""kNN voting and retrieved demonstrations: every text field indexed, one vote per example."""

from __future__ import annotations

import promptkit as pk

PAIR = pk.Task.classification(["contradiction", "entailment"], text_fields=["premise", "hypothesis"],
                              template="sentence_pair")


def pair_rows():
    # words the tiny test tokenizer knows; only the second field tells the rows apart
    words = ["good great", "bad awful", "fine lovely", "poor dull", "superb fun", "weak messy"]
    return [{"premise": "the film was a movie", "hypothesis": f"{w} story {w}",
             "label": "entailment" if i % 2 else "contradiction"} for i, w in enumerate(words)]


def test_one_vote_per_example(tiny_bert, sentiment_task):
    long_positive = {"text": " ".join(["good great film"] * 400), "label": "positive"}
    short = [{"text": f"bad film number {i}", "label": "negative"} for i in range(3)]
    knn = pk.create_adapter("knn", task=sentiment_task, embedder=tiny_bert, top_k=3)
    knn.fit([long_positive, *short])
    assert len(knn.memory_.knowledge) > 3, "the long example must span several chunks"
    for prediction in knn.predict(["good great film", "bad film"]):
        rows = [s["source"] for s in prediction.sources]
        assert len(rows) == len(set(rows)) == 3  # three examples, each voting once


def test_every_text_field_is_indexed(tiny_bert):
    rows = pair_rows()
    knn = pk.create_adapter("knn", task=PAIR, embedder=tiny_bert, top_k=1)
    knn.fit(rows)
    for index, row in enumerate(rows):
        query = {"premise": row["premise"], "hypothesis": row["hypothesis"]}
        assert knn.predict([query])[0].sources[0]["source"] == f"example:{index}"


def test_demonstrations_carry_every_field(tiny_bert, tiny_gpt2):
    base = pk.create_adapter("prompt", model=tiny_gpt2, task=PAIR, shots=2, chat=False)
    rag = pk.create_adapter("retrieval", base=base, demonstrations=2, embedder=tiny_bert)
    rows = pair_rows()
    rag.fit(rows)
    seen = []
    original = base.predict
    base.predict = lambda records: seen.extend(records) or original(records)
    rag.predict([{"premise": rows[0]["premise"], "hypothesis": rows[0]["hypothesis"]}])
    demos = seen[0]["demonstrations"]
    assert len(demos) == 2
    assert all(set(d) == {"premise", "hypothesis", "label"} for d in demos)
    assert demos[-1]["hypothesis"] == rows[0]["hypothesis"]  # the nearest sits next to the input
    prompt = base.prompts(seen)[0]
    assert prompt.count(rows[0]["hypothesis"]) == 2  # the nearest demonstration, then the input
