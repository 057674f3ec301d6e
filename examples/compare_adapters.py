"""Compare adapters on the same test set: intervals, paired tests, and an HTML report."""

from _common import FAST, encoder, sentiment_data

import promptkit as pk

train, test = sentiment_data(train=1000, test=300)
task = pk.Task.classification(["negative", "positive"], template="sentiment")
settings = {"epochs": 5 if FAST else 1, "batch_size": 32, "max_length": 64}
lora = pk.create_adapter("lora", model=encoder(), task=task, learning_rate=5e-4, **settings)
full = pk.create_adapter("full", model=encoder(), task=task, **settings)
knn = pk.create_adapter("knn", task=task, embedder=encoder(), top_k=10)
for adapter in (lora, full, knn):
    adapter.fit(train)
report = pk.Evaluator(task).compare({"lora": lora, "full": full, "knn": knn}, test)
print(report.table())
report.save("runs/compare")
print("open runs/compare/report.html")
