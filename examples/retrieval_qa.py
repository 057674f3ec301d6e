"""Retrieval-augmented answers: SmolLM2 with the Python FAQ knowledge base, with citations."""

from _common import causal_lm, encoder

import promptkit as pk

kb = pk.KnowledgeBase.build(pk.datasets.knowledge_dir("python-faq"), embedder=encoder())
task = pk.Task.generation(template="rag_qa")
base = pk.create_adapter("prompt", model=causal_lm(), task=task, max_new_tokens=64, stop=[])
rag = pk.create_adapter("retrieval", base=base, knowledge=kb, top_k=3)
questions = ["How do I make a Python script executable on Unix?",
             "Why are Python strings immutable?",
             "How do I copy a file in Python?"]
for question, prediction in zip(questions, rag.predict([{"question": q} for q in questions]), strict=False):
    print(question, "->", " ".join(prediction.text.split()))
    for source in prediction.sources:
        print(f"   [{source['number']}] {source['source']} {source['span']}")
