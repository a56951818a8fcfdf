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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise CaptureError(f"cannot load the checkpoint at {folder}: {exc}") from None
    target: Any = pick_device(device)
    model.to(target)
    model.train(False)
    return model, tokenizer
