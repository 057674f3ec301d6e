"""PEFT adapters: LoRA (and DoRA), prompt tuning, prefix tuning, P-tuning and IA3.

Each method is a config model (its own settings on top of the shared training settings) and a
``_peft_config`` that builds the matching ``peft`` config. Training, prediction and saving are
shared with full fine-tuning. A saved PEFT adapter holds only the adapter weights (plus the
trained classification head) and a reference to the base model, and stays loadable with plain
``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from promptkit import models
from promptkit.adapters.base import AdapterConfig
from promptkit.adapters.finetune import FineTuneAdapter, FullFineTune, TrainingConfig
from promptkit.artifacts import sha256_file
from promptkit.errors import ArtifactError, ConfigError, PromptkitError


class PeftAdapter(FineTuneAdapter):
    """Shared PEFT plumbing: wrap the base model, save only adapter weights, reload onto base."""

    @abstractmethod
    def _peft_config(self, task_type: str, model: Any) -> Any:
        """The ``peft`` config for this method, for ``task_type`` and the wrapped ``model``."""

    def _prepare_base(self, model: Any) -> Any:
        """The base model as this method needs it, before wrapping or loading an adapter."""
        return model

    def _pair_lora(self) -> dict[str, Any] | None:
        raise ConfigError(
            f"{self.name} does not train retrieval or rerank models; use 'lora' or 'full'."
        )

    def _wrap_model(self, model: Any) -> Any:
        from peft import get_peft_model

        assert self.head_ is not None
        task_type = self.head_.peft_task_type
        model = self._prepare_base(model)
        try:
            return get_peft_model(model, self._peft_config(task_type, model))
        except PromptkitError:
            raise
        except ValueError as exc:
            raise ConfigError(
                f"{self.name}: could not attach to {self.config.model!r} "
                f"({type(model).__name__}): {exc}. Set target_modules=[...] to the names of the "
                "layers to adapt."
            ) from exc

    def _save_model(self, directory: Path) -> None:
        self.model_.save_pretrained(directory)  # adapter_config.json + adapter_model.safetensors
        (directory / "base_model.json").write_text(json.dumps(_base_reference(self.config.model)))

    def _saved_tensors(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(self.model_))

    def _load_model(self, directory: Path, manifest: dict[str, Any]) -> Any:
        from peft import PeftModel

        self._check_base(directory)
        base = self._prepare_base(self._base_model(self.config.model or "", pretrained=True))
        return PeftModel.from_pretrained(base, str(directory))

    def _check_base(self, directory: Path) -> None:
        reference = json.loads((directory / "base_model.json").read_text())
        current = _base_reference(self.config.model)
        if reference.get("sha256") and current.get("sha256") != reference["sha256"]:
            raise ArtifactError(
                f"{directory}: the base model {self.config.model!r} differs from the one this "
                f"adapter was trained on (weights sha256 {current.get('sha256')} vs "
                f"{reference['sha256']}). Load it with the original base model."
            )

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Load another saved adapter of the same kind onto this base model, under ``name``.

        Switch between them with :meth:`use`; the base model is loaded once.
        """
        from promptkit.artifacts import read_manifest

        self._check_fitted()
        manifest = read_manifest(path)
        if manifest["kind"] != self.name:
            raise ConfigError(
                f"{path} holds a {manifest['kind']!r} adapter; this is {self.name!r}."
            )
        other = manifest["config"]
        if other.get("model") != self.config.model or other["task"]["labels"] != self.task.labels:
            raise ConfigError(f"{path} was trained on another base model or label set.")
        self.model_.load_adapter(str(path), adapter_name=name)

    def use(self, name: str) -> None:
        """Make the named adapter active (``"default"`` is the one this adapter trained)."""
        available = list(self.model_.peft_config)
        if name not in available:
            raise ConfigError(f"No adapter named {name!r}; loaded: {available}.")
        self.model_.set_adapter(name)

    def _export_model(self) -> Any:
        if not hasattr(self.model_, "merge_and_unload"):
            raise ConfigError(f"{self.name} adapters cannot be merged, so not exported to ONNX.")
        return self.merge().model_

    def merge(self, inplace: bool = False) -> FullFineTune:
        """Fold the adapter into the base weights; returns a ``full`` adapter (LoRA and IA3).

        By default the merge works on a copy of the model (one more model in memory) and this
        adapter stays usable. ``inplace=True`` merges this adapter's own model instead: no copy,
        but this adapter is then spent (it must be loaded or fitted again before use).
        """
        import copy

        self._check_fitted()
        if not hasattr(self.model_, "merge_and_unload"):
            raise ConfigError(f"{self.name} adapters cannot be merged into the base model.")
        merged = FullFineTune(
            TrainingConfig(
                **{
                    k: v
                    for k, v in self.config.model_dump().items()
                    if k in TrainingConfig.model_fields
                }
            )
        )
        source = self.model_ if inplace else copy.deepcopy(self.model_)
        merged.model_ = source.merge_and_unload()
        merged.tokenizer_, merged.head_ = self.tokenizer_, self.head_
        if inplace:
            self.model_, self.fitted_ = None, False
        merged.fitted_, merged.fit_result_ = True, self.fit_result_
        return merged


def _base_reference(model: str | None) -> dict[str, Any]:
    path = Path(models.resolve(model or ""))
    weights = next(
        (p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.is_file()), None
    )
    return {"model": model, "sha256": sha256_file(weights) if weights else None}


class LoraConfig(TrainingConfig):
    learning_rate: float = Field(5e-4, gt=0, le=1)
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (lora_alpha).")
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Layers to adapt: module names, 'all-linear' (every linear layer but the "
        "output head), or unset for the attention projections PEFT knows for the model.",
    )
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")


class LoraAdapter(PeftAdapter):
    """Low-rank updates on the attention projections (DoRA with ``use_dora=True``)."""

    name = "lora"
    Config: ClassVar[type[AdapterConfig]] = LoraConfig
    config: LoraConfig

    def _pair_lora(self) -> dict[str, Any] | None:
        if self.config.use_dora:
            raise ConfigError("use_dora is not supported for retrieval or rerank models.")
        keys = ("r", "alpha", "lora_dropout", "target_modules")
        return {k: getattr(self.config, k) for k in keys}

    def _peft_config(self, task_type: str, model: Any) -> Any:
        from peft import LoraConfig as PeftLoraConfig

        return PeftLoraConfig(
            task_type=task_type,
            r=self.config.r,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=self.config.target_modules,
            use_dora=self.config.use_dora,
        )


class PromptTuningConfig(TrainingConfig):
    learning_rate: float = Field(3e-3, gt=0, le=1)
    num_virtual_tokens: int = Field(16, ge=1, le=512)
    init: Literal["random", "text"] = Field("random", description="How to start the soft prompt.")
    init_text: str = Field("Classify the text.", description="Text for init='text'.")


class PromptTuningAdapter(PeftAdapter):
    """A trained soft prompt of ``num_virtual_tokens`` embeddings; the model stays frozen."""

    name = "prompt_tuning"
    Config: ClassVar[type[AdapterConfig]] = PromptTuningConfig
    config: PromptTuningConfig

    def _peft_config(self, task_type: str, model: Any) -> Any:
        from peft import PromptTuningConfig as PeftPromptTuningConfig
        from peft import PromptTuningInit

        text = self.config.init == "text"
        return PeftPromptTuningConfig(
            task_type=task_type,
            num_virtual_tokens=self.config.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=self.config.init_text if text else None,
            tokenizer_name_or_path=models.resolve(self.config.model or "") if text else None,
        )


class PrefixTuningConfig(TrainingConfig):
    learning_rate: float = Field(3e-3, gt=0, le=1)
    num_virtual_tokens: int = Field(16, ge=1, le=512)
    prefix_projection: bool = Field(False, description="Reparameterize through an MLP.")


class PrefixTuningAdapter(PeftAdapter):
    """Trained key/value prefixes in every attention layer.

    Works for classification too: transformers 5 sequence classifiers no longer name
    ``past_key_values`` in their forward, but they still pass a key/value cache through to the
    backbone, so the classifier is given a forward that takes the prefixes as that cache.
    """

    name = "prefix_tuning"
    Config: ClassVar[type[AdapterConfig]] = PrefixTuningConfig
    config: PrefixTuningConfig

    def _prepare_base(self, model: Any) -> Any:
        return model if self.head_ is None or self.head_.generates else _accept_prefix(model)

    def _peft_config(self, task_type: str, model: Any) -> Any:
        from peft import PrefixTuningConfig as PeftPrefixTuningConfig

        if task_type == "SEQ_CLS" and not _takes_prefix(model):
            raise ConfigError(
                f"prefix_tuning needs a model whose forward takes past_key_values or passes a "
                f"key/value cache to its backbone; {type(model).__name__} does neither. Use "
                "p_tuning, prompt_tuning or lora for this model."
            )

        return PeftPrefixTuningConfig(
            task_type=task_type,
            num_virtual_tokens=self.config.num_virtual_tokens,
            prefix_projection=self.config.prefix_projection,
        )


_PREFIX_CLASSES: dict[type, type] = {}


def _parameters(module: Any) -> set[str]:
    import inspect

    return set(inspect.signature(module.forward).parameters) if module is not None else set()


def _backbone(model: Any) -> Any:
    return getattr(model, getattr(model, "base_model_prefix", ""), None)


def _takes_prefix(model: Any) -> bool:
    """Whether PEFT can pass prefixes as ``past_key_values`` to the model or its backbone."""
    return "past_key_values" in _parameters(model) | _parameters(_backbone(model))


def _accept_prefix(model: Any) -> Any:
    """Give a sequence classifier a forward that takes PEFT's prefixes as its key/value cache.

    The prefixes enter each self-attention layer through ``Cache.update`` (concatenated before the
    sequence's own keys and values); positions stay those of the unprefixed input. Classifiers
    whose backbone takes no cache are returned unchanged (prefix_tuning then says so).
    """
    cls = type(model)
    if _takes_prefix(model) or "cache" not in _parameters(_backbone(model)):
        return model
    if cls not in _PREFIX_CLASSES:

        def forward(
            self: Any,
            input_ids: Any = None,
            attention_mask: Any = None,
            past_key_values: Any = None,
            labels: Any = None,
            **kwargs: Any,
        ) -> Any:
            import torch

            dropped = ("return_dict", "output_attentions", "output_hidden_states")
            kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in dropped}
            if past_key_values is not None and kwargs.get("position_ids") is None:
                length = input_ids.shape[1]  # keep the pretrained positions: 0..length-1
                kwargs["position_ids"] = torch.arange(length, device=input_ids.device)[None, :]
            return cls.forward(
                self,
                input_ids=input_ids,
                attention_mask=attention_mask,
                labels=labels,
                cache=past_key_values,
                **kwargs,
            )

        _PREFIX_CLASSES[cls] = type(cls.__name__, (cls,), {"forward": forward})
    model.__class__ = _PREFIX_CLASSES[cls]
    return model


class PTuningConfig(TrainingConfig):
    learning_rate: float = Field(3e-3, gt=0, le=1)
    num_virtual_tokens: int = Field(16, ge=1, le=512)
    encoder_hidden_size: int = Field(64, ge=1)


class PTuningAdapter(PeftAdapter):
    """P-tuning: virtual tokens produced by a small trained prompt encoder."""

    name = "p_tuning"
    Config: ClassVar[type[AdapterConfig]] = PTuningConfig
    config: PTuningConfig

    def _peft_config(self, task_type: str, model: Any) -> Any:
        from peft import PromptEncoderConfig

        return PromptEncoderConfig(
            task_type=task_type,
            num_virtual_tokens=self.config.num_virtual_tokens,
            encoder_hidden_size=self.config.encoder_hidden_size,
        )


class IA3Config(TrainingConfig):
    learning_rate: float = Field(3e-3, gt=0, le=1)
    target_modules: list[str] | None = Field(None, description="Layers to rescale; auto if unset.")
    feedforward_modules: list[str] | None = Field(None)


class IA3Adapter(PeftAdapter):
    """IA3: learned rescaling vectors on keys, values and feed-forward activations."""

    name = "ia3"
    Config: ClassVar[type[AdapterConfig]] = IA3Config
    config: IA3Config

    def _peft_config(self, task_type: str, model: Any) -> Any:
        from peft import IA3Config as PeftIA3Config

        return PeftIA3Config(
            task_type=task_type,
            target_modules=self.config.target_modules,
            feedforward_modules=self.config.feedforward_modules,
        )
