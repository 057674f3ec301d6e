"""What to predict: a classification label set or a generation target, and the template to use."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from promptkit.config import validate
from promptkit.data import DataSource, Records, read_records
from promptkit.errors import DataError
from promptkit.templates import Template, load_template

DEFAULT_TEMPLATES = {"classification": "classify", "generation": "generate"}
PAIR_KINDS = ("retrieval", "rerank")  # a query and a passage: embedders and cross-encoders
MANY_LABELS = 20


def infer_labels(records: Records, label_field: str = "label", name: str = "data") -> list[str]:
    """The label set of a dataset: its distinct label values, sorted.

    More than 20 distinct values is allowed but warned about, listing them: a free-text column
    picked as the label by mistake shows up here rather than as a thousand-way classifier.
    """
    import warnings

    values = {str(r[label_field]) for r in records if r.get(label_field) is not None}
    if len(values) < 2:
        raise DataError(
            f"The {name} has {len(values)} distinct value(s) in field {label_field!r} "
            f"({sorted(values)}); a classifier needs at least two. Pass the labels explicitly "
            "(--labels a,b or labels: [a, b]) or set label_field."
        )
    labels = sorted(values)
    if len(labels) > MANY_LABELS:
        warnings.warn(
            f"The {name} has {len(labels)} distinct labels in field {label_field!r}: "
            f"{', '.join(labels)}. If that field is not the label, set label_field.",
            stacklevel=2,
        )
    return labels


class Task(BaseModel):
    """A task: its kind, its fields, and the template that formats an example for the model.

    Build one with :meth:`classification`, :meth:`generation`, :meth:`retrieval` or
    :meth:`rerank`; the template's variables are checked against the task's fields right away.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["classification", "generation", "retrieval", "rerank"]
    labels: list[str] = Field(default_factory=list, description="Label names (classification).")
    text_fields: list[str] = Field(default_factory=list, description="Input fields of an example.")
    label_field: str = Field("label", description="Field holding the label (classification).")
    target_field: str = Field(
        "answer",
        description="Field holding the reference output (for retrieval and rerank tasks, the "
        "relevant passage).",
    )
    template: str = Field(
        "",
        description="Template name or path to a .j2 file. Unset: a classification head reads the "
        "text fields alone; models that read prompts get 'classify' or 'generate'.",
    )
    template_dirs: list[str] = Field(default_factory=list, description="Extra template folders.")

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        labels = [str(label) for label in labels]
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique, got {labels}")
        return labels

    @model_validator(mode="after")
    def _check(self) -> Task:
        if self.kind == "classification" and len(self.labels) < 2:
            raise ValueError(f"a classification task needs at least two labels, got {self.labels}")
        if self.kind in PAIR_KINDS and len(self.text_fields) != 1:
            raise ValueError(f"a {self.kind} task has one query field, got {self.text_fields}")
        template = self.template_obj  # loads and checks the template now, not at example 5,000
        if template.task != self.kind:
            raise ValueError(
                f"template {template.name!r} is for {template.task}, but the task is {self.kind}"
            )
        template.check_fields(self.text_fields, where=f"the task's fields {self.text_fields}")
        return self

    # ---- constructors -------------------------------------------------------------------------

    @classmethod
    def classification(
        cls,
        labels: Sequence[str],
        text_fields: Sequence[str] | str | None = None,
        label_field: str = "label",
        template: str | None = None,
        template_dirs: Sequence[str] = (),
    ) -> Task:
        """A classification task. Only ``labels`` is needed for the common ``text`` → ``label``."""
        return cls._build(
            kind="classification",
            labels=list(labels),
            text_fields=text_fields,
            label_field=label_field,
            template=template or "",
            template_dirs=list(template_dirs),
        )

    @classmethod
    def generation(
        cls,
        prompt_fields: Sequence[str] | str | None = None,
        target_field: str = "answer",
        template: str | None = None,
        template_dirs: Sequence[str] = (),
    ) -> Task:
        """A generation task: render ``prompt_fields``, predict ``target_field``."""
        return cls._build(
            kind="generation",
            text_fields=prompt_fields,
            target_field=target_field,
            template=template or "",
            template_dirs=list(template_dirs),
        )

    @classmethod
    def retrieval(
        cls,
        query_field: str = "query",
        passage_field: str = "passage",
        template: str | None = None,
        template_dirs: Sequence[str] = (),
    ) -> Task:
        """Match a query to its relevant passage: what an embedder (bi-encoder) learns.

        Records hold ``query_field`` and, for training, ``passage_field``. The ``full`` and
        ``lora`` adapters train a sentence-transformers model on them (in-batch and mined hard
        negatives); predictions score each (query, passage) pair. A template, if given, formats
        the query (e.g. an instruction prefix); unset, the query is embedded as it is.
        """
        return cls._pair("retrieval", query_field, passage_field, template, template_dirs)

    @classmethod
    def rerank(
        cls,
        query_field: str = "query",
        passage_field: str = "passage",
        template: str | None = None,
        template_dirs: Sequence[str] = (),
    ) -> Task:
        """Score a (query, passage) pair jointly: what a cross-encoder reranker learns."""
        return cls._pair("rerank", query_field, passage_field, template, template_dirs)

    @classmethod
    def _pair(
        cls,
        kind: str,
        query_field: str,
        passage_field: str,
        template: str | None,
        template_dirs: Sequence[str],
    ) -> Task:
        if query_field == passage_field:
            raise DataError(f"query_field and passage_field are both {query_field!r}.")
        return validate(
            cls,
            {
                "kind": kind,
                "text_fields": [query_field],
                "target_field": passage_field,
                "template": template or "",
                "template_dirs": list(template_dirs),
            },
            "Task",
        )

    @property
    def pairs(self) -> bool:
        """Whether this is a retrieval or rerank task (query and passage, scored together)."""
        return self.kind in PAIR_KINDS

    @property
    def query_field(self) -> str:
        return self.text_fields[0]

    def query(self, record: dict[str, Any]) -> str:
        """The text a retrieval or rerank model reads for a record's query."""
        return self.render(record) if self.template else str(record[self.query_field])

    @classmethod
    def _build(cls, text_fields: Sequence[str] | str | None, **kwargs: Any) -> Task:
        if isinstance(text_fields, str):
            text_fields = [text_fields]
        if text_fields is None:  # default: the fields the template reads
            name = kwargs["template"] or DEFAULT_TEMPLATES[kwargs["kind"]]
            text_fields = load_template(name, kwargs["template_dirs"]).required_fields
        return validate(cls, {"text_fields": list(text_fields), **kwargs}, "Task")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        """A task from its dict form (YAML, a manifest); ``text_fields`` defaults to the fields
        the template reads, as in :meth:`classification` and :meth:`generation`."""
        data = dict(data)
        if data.get("kind") == "generation" and "prompt_fields" in data:
            data["text_fields"] = data.pop("prompt_fields")
        if data.get("kind") in PAIR_KINDS and "query_field" in data:
            data["text_fields"] = [data.pop("query_field")]
        if data.get("kind") in PAIR_KINDS and "passage_field" in data:
            data["target_field"] = data.pop("passage_field")
        if "text_fields" not in data and data.get("kind") in DEFAULT_TEMPLATES:
            data.setdefault("template", "")
            data.setdefault("template_dirs", [])
            return cls._build(text_fields=None, **data)
        return validate(cls, data, "task")

    # ---- template -----------------------------------------------------------------------------

    @cached_property
    def template_obj(self) -> Template:
        if self.kind in PAIR_KINDS and not self.template:  # the query field, as it is
            field = self.text_fields[0] if self.text_fields else "query"
            header = f"name: query\ntask: {self.kind}\nfields: [{field}]\nversion: 1"
            return Template.from_string(f"{{# ---\n{header}\n--- #}}\n{{{{ {field} }}}}\n")
        return load_template(self.template or DEFAULT_TEMPLATES[self.kind], self.template_dirs)

    @property
    def template_named(self) -> bool:
        """Whether a template was chosen; if not, classification heads read the text alone."""
        return bool(self.template)

    @property
    def fingerprint(self) -> str:
        payload = json.dumps(self.model_dump(), sort_keys=True) + self.template_obj.sha256
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def render(self, record: dict[str, Any], **extra: Any) -> str:
        return self.template_obj.render(record, labels=self.labels, **extra)

    # ---- data ---------------------------------------------------------------------------------

    def prepare(
        self, source: DataSource, require_target: bool = True, name: str = "data"
    ) -> Records:
        """Read and validate examples: fields present, labels known. Returns clean records."""
        if source is None:
            raise DataError(f"No {name} given.")
        default_field = self.text_fields[0] if self.text_fields else "text"
        records = read_records(source, text_field=default_field)
        if not records:
            raise DataError(f"The {name} is empty: at least one example is needed.")
        needed = list(self.text_fields)
        target = self.label_field if self.kind == "classification" else self.target_field
        if require_target:
            needed.append(target)
        clean = []
        for index, record in enumerate(records):
            missing = [f for f in needed if f not in record or record[f] is None]
            if missing:
                raise DataError(
                    f"Example {index} of the {name} lacks field(s) {missing}; it has "
                    f"{sorted(record)}. Rename the fields or set text_fields/label_field."
                )
            row = dict(record)
            for f in self.text_fields:
                if not isinstance(row[f], str):
                    row[f] = str(row[f])
            if self.kind == "classification" and target in row and row[target] is not None:
                row[target] = self.label_name(row[target], index, name)
            clean.append(row)
        return clean

    def label_name(self, value: Any, index: int = 0, name: str = "data") -> str:
        text = str(value)
        if text in self.labels:
            return text
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.labels):
            return self.labels[value]
        raise DataError(
            f"Example {index} of the {name} has label {value!r}, which is not in the label set "
            f"{self.labels}."
        )
