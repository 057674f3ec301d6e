"""Quickstart: fine-tune MiniLM with LoRA on movie reviews, predict, save, reload, evaluate."""

from _common import FAST, encoder, sentiment_data

import promptkit as pk

train, test = sentiment_data()
task = pk.Task.classification(labels=["negative", "positive"], template="sentiment")
lora = pk.create_adapter("lora", model=encoder(), task=task, r=8, epochs=1 if not FAST else 5,
                         learning_rate=5e-4 if not FAST else 1e-2, batch_size=32, max_length=64)
lora.fit(train)
print(lora.predict(["A gripping, beautifully shot film."])[0])
lora.save("runs/quickstart-lora")
same = pk.load_adapter("runs/quickstart-lora")
print(pk.Evaluator(task).evaluate(same, test, name="lora").table())
