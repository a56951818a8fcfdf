"""Load a local checkpoint directory the way a user's code would (``from_pretrained``), offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CaptureError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CaptureError("--device cuda was asked for, but no CUDA device is available")
    return device


def load_local(path: Path | str, *, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) from a local directory; never reaches the network."""
    folder = Path(path)
    if not folder.exists():
        raise CaptureError(f"model path does not exist: {folder}")
    if not (folder / "config.json").is_file():
        raise CaptureError(f"not a model checkpoint directory (no config.json): {folder}")
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # we draw our own
    torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = load_causal_lm(folder, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise CaptureError(f"cannot load the checkpoint at {folder}: {exc}") from None
    target: Any = pick_device(device)
    model.to(target)
    model.train(False)
    return model, tokenizer


def causal_lm_class(config: Any) -> Any:
    """The ``*ForCausalLM`` class of a config: the Auto mapping's, else the checkpoint's declared
    architecture, else ``<Family>ForCausalLM`` (families transformers ships but does not map,
    such as Mistral4); None when there is none."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", ""), "")]
    names += [name for name in getattr(config, "architectures", None) or [] if name.endswith("ForCausalLM")]
    names.append(type(config).__name__.removesuffix("Config") + "ForCausalLM")
    for name in names:
        cls = getattr(transformers, name, None) if name else None
        if cls is not None and name.endswith("ForCausalLM"):
            return cls
    return None


def load_causal_lm(folder: Path | str, *, dtype: Any = "auto") -> Any:
    """``from_pretrained`` through the Auto class, or the family's own causal LM class where the
    Auto mapping has none (the same loading path, by the class the checkpoint names)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        cls = causal_lm_class(config)
        if cls is None:
            raise
        return cls.from_pretrained(folder, local_files_only=True, dtype=dtype)
