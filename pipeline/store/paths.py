"""Where a store lives: the path encodes the extraction setting so two settings never collide."""

from __future__ import annotations

import re
from pathlib import Path


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", str(s).replace("/", "--")).strip("-") or "unnamed"


def setting_tag(context_length: int, stride: int, top_k: int, logprob_dtype: str, model_dtype: str,
                quantization: str | None = None, scoring: str | None = None) -> str:
    """e.g. 'L1024-S512-K64-lp16-bfloat16' (+ '-q4bit', '-joined')."""
    lp = {"float16": "lp16", "float32": "lp32"}.get(logprob_dtype, logprob_dtype)
    parts = [f"L{context_length}", f"S{stride}", f"K{top_k}", lp, model_dtype]
    if quantization:
        parts.append(f"q{quantization}")
    if scoring and scoring != "independent":
        parts.append(scoring)
    return _slug("-".join(str(p) for p in parts))


def store_path(root, dataset: str, split: str, model: str, tag: str) -> Path:
    """root/<dataset>/<split>/<model>/<tag>.zarr"""
    return Path(root) / _slug(dataset) / _slug(split) / _slug(model) / f"{_slug(tag)}.zarr"
