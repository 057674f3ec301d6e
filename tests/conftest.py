from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
from hypothesis import settings

from promptkit.testing import tiny_model, toy_classification, toy_generation

# property tests draw the same cases on every run: a test suite must not pass or fail by chance
settings.register_profile("promptkit", derandomize=True)
settings.load_profile("promptkit")


@pytest.fixture(scope="session")
def tiny_bert() -> str:
    return tiny_model("bert")


@pytest.fixture(scope="session")
def tiny_gpt2() -> str:
    return tiny_model("gpt2")


@pytest.fixture(scope="session")
def tiny_t5() -> str:
    return tiny_model("t5")


@pytest.fixture(scope="session")
def sentiment_task():
    import promptkit as pk

    return pk.Task.classification(["negative", "positive"], template="sentiment")


@pytest.fixture(scope="session")
def qa_task():
    import promptkit as pk

    return pk.Task.generation(template="closed_book_qa")


@pytest.fixture()
def toy_data() -> list[dict[str, str]]:
    return toy_classification(48)


@pytest.fixture()
def toy_qa() -> list[dict[str, str]]:
    return toy_generation(24)
