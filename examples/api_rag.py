"""Retrieval over an API model: Python FAQ passages injected into a hosted model's prompt, answers
with [n] citations and their sources.

    python examples/api_rag.py                                   # starts llama.cpp locally
    python examples/api_rag.py --base-url http://host:8000/v1 --model NAME [--api-key-env VAR]

Without ``--base-url`` it starts a local OpenAI-compatible server (llama.cpp from the xllamacpp
wheel, serving SmolLM2-135M-Instruct's GGUF) and stops it at the end. The knowledge base, the
template and the retrieval adapter are the same as with a local model; only ``model`` changes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile

import promptkit as pk

QUESTIONS = [
    "How do I copy an object in Python?",
    "How do I iterate over a sequence in reverse order?",
    "How do I make a Python script executable on Unix?",
    "Why are Python strings immutable?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible server's URL ending in /v1")
    parser.add_argument("--model", default="smollm2", help="the model name the server knows")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY")
    parser.add_argument("--embedder", default="minilm")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.base_url or stack.enter_context(pk.testing.llama_cpp_server())
        model = {"provider": "openai", "name": args.model, "base_url": url,
                 "api_key_env": args.api_key_env}
        kb = pk.KnowledgeBase.build(pk.datasets.knowledge_dir("python-faq"),
                                    embedder=args.embedder, chunking={"max_tokens": 128})
        task = pk.Task.generation(template="rag_qa")
        reader = pk.create_adapter("prompt", model=model, task=task, max_new_tokens=64,
                                   api_cache=os.path.join(tempfile.gettempdir(), "promptkit-api"))
        rag = pk.create_adapter("retrieval", base=reader, knowledge=kb, top_k=3,
                                distinct="heading")
        predictions = rag.predict([{"question": q} for q in QUESTIONS])
        for question, prediction in zip(QUESTIONS, predictions, strict=True):
            print(f"Q: {question}\nA: {' '.join(prediction.text.split())}")
            for source in prediction.sources or []:
                print(f"   [{source['number']}] {source['source']} "
                      f"({source['metadata'].get('heading', '')}, score {source['score']:.2f})")
        print("API use:", rag.api_usage())


if __name__ == "__main__":
    main()
