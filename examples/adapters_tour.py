"""Every adaptation method behind the same four calls: fit, predict, save, load."""

import tempfile

from _common import FAST, causal_lm, encoder, sentiment_data

import promptkit as pk

train, test = sentiment_data(train=400, test=50)
task = pk.Task.classification(["negative", "positive"], template="sentiment")
short = {"epochs": 5 if FAST else 1, "batch_size": 16, "max_length": 64}
candidates = {
    "full": pk.create_adapter("full", model=encoder(), task=task, **short),
    "lora": pk.create_adapter("lora", model=encoder(), task=task, r=8, **short),
    "dora": pk.create_adapter("lora", model=encoder(), task=task, use_dora=True, **short),
    "ia3": pk.create_adapter("ia3", model=encoder(), task=task, **short),
    "p_tuning": pk.create_adapter("p_tuning", model=encoder(), task=task, **short),
    "prompt_tuning": pk.create_adapter("prompt_tuning", model=encoder(), task=task, **short),
    "prefix_tuning": pk.create_adapter("prefix_tuning", model=encoder(), task=task, **short),
    "zero_shot": pk.create_adapter("prompt", model=causal_lm(), task=task),
    "knn": pk.create_adapter("knn", task=task, embedder=encoder(), top_k=10),
}
folder = tempfile.mkdtemp()
for name, adapter in candidates.items():
    result = adapter.fit(train)
    adapter.save(f"{folder}/{name}")
    again = pk.load_adapter(f"{folder}/{name}")
    accuracy = sum(p.label == r["label"] for p, r in zip(again.predict(test), test, strict=False)) / len(test)
    print(f"{name:14} accuracy {accuracy:.3f}  trainable {result.trainable_params:>10,}  "
          f"fit {result.fit_seconds:6.1f}s")

# Prefix tuning trains generation models too:
qa = pk.Task.generation(template="closed_book_qa")
prefix = pk.create_adapter("prefix_tuning", model=causal_lm(), task=qa, epochs=1, batch_size=8)
prefix.fit([{"question": "What is the capital of France?", "answer": "Paris"}] * 8)
print("prefix tuning:", prefix.predict([{"question": "What is the capital of France?"}])[0].text)
