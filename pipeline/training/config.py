"""Typed, frozen view of the training config (conf/train.yaml + conf/train/<name>.yaml)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

ARCHS = ("lstm", "gru", "transformer", "simple_transformer", "esm")  # esm: a masked protein LM (training/masked.py)


class TrainConfigError(ValueError):
    """A training config value is invalid."""


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    name: str
    arch: str                            # lstm | gru | transformer | simple_transformer
    embed_size: int = 128                # E (lstm/gru/transformer); the SimpleTransformer's hidden size
    hidden_size: int = 128               # recurrent hidden size
    num_layers: int = 1
    nhead: int = 2
    ffn_size: int = 200
    seq_len: int = 35                    # bptt segment length; the small Transformer's positional length
    dropout: float = 0.2
    epochs: int = 5
    batch_size: int = 20
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: float = 0.0                  # fraction of steps (SimpleTransformer)
    clip: float | None = None
    max_length: int = 1024               # SimpleTransformer block length
    tokenizer: str | None = None         # SimpleTransformer: HF tokenizer dir/hub id or package:<module>
    tokenizer_gguf_file: str | None = None
    vocab_max_size: int = 10_000         # word-level vocabulary (lstm/gru/transformer)
    vocab_min_freq: int = 2
    max_train_tokens: int | None = None  # cap of the training stream (demo budgets)
    max_steps: int | None = None
    seed: int = 42
    device: str = "auto"

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise TrainConfigError(f"train.arch={self.arch!r}: use one of {ARCHS}")
        if self.arch == "simple_transformer" and not self.tokenizer:
            raise TrainConfigError("train.tokenizer is required for simple_transformer (a HF tokenizer: hub id, "
                                   "directory, or package:<module> with train.tokenizer_gguf_file)")
        if self.arch in ("transformer", "esm") and self.embed_size % self.nhead:
            raise TrainConfigError(f"train.embed_size={self.embed_size} must be divisible by nhead={self.nhead}")
        for key in ("epochs", "batch_size", "grad_accum", "seq_len", "embed_size"):
            if getattr(self, key) < 1:
                raise TrainConfigError(f"train.{key}={getattr(self, key)} must be >= 1")


def train_spec_from_dict(d: dict) -> TrainSpec:
    from .image_config import IMAGE_ARCHS, image_train_spec_from_dict

    if d.get("arch") in IMAGE_ARCHS:  # image classifiers: their own spec (training/image_config.py)
        return image_train_spec_from_dict(d)
    names = {f.name for f in dataclasses.fields(TrainSpec)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise TrainConfigError(f"unknown key(s) {unknown} in config group 'train'; known: {sorted(names)}")
    return TrainSpec(**d)



MARKER = "training.json"  # written last into a trained model's directory: its settings, losses, provenance
# Settings that change where or how fast a model trains, not what it learns.
_RUNTIME_KEYS = frozenset({"device", "num_threads"})


def _setting_changes(before: dict, now: dict) -> list[str]:
    """'section.key: old there, new now' for every train/dataset setting that differs (runtime keys aside)."""
    changes = []
    for section in ("train", "dataset"):
        old, new = before.get(section) or {}, now.get(section) or {}
        for k in sorted((set(old) | set(new)) - _RUNTIME_KEYS):
            if json.dumps(old.get(k), sort_keys=True, default=str) != json.dumps(new.get(k), sort_keys=True,
                                                                                   default=str):
                changes.append(f"{section}.{k}: {old.get(k)!r} there, {new.get(k)!r} now")
    return changes


def reuse_trained(out, name: str, resolved: dict | None, overwrite: bool) -> bool:
    """Whether ``out`` already holds ``name`` trained with these settings (then it is reused). False when there
    is nothing to reuse or ``overwrite`` retrains; a `TrainConfigError` when it was trained with other settings
    (a model is never silently reused for settings it was not trained with)."""
    marker = Path(out) / MARKER
    if overwrite or not marker.exists():
        return False
    try:
        before = json.loads(marker.read_text()).get("config") or {}
    except (OSError, ValueError) as e:
        raise TrainConfigError(f"{marker} is unreadable ({type(e).__name__}); pass overwrite=true to retrain "
                               f"{name} into {out}") from e
    changes = _setting_changes(before, resolved) if resolved and before else []  # unrecorded: reused as it is
    if changes:
        more = f"; and {len(changes) - 3} more" if len(changes) > 3 else ""
        raise TrainConfigError(f"{out} holds {name} trained with other settings ({'; '.join(changes[:3])}{more}): "
                               "pass overwrite=true to retrain it there, or out=DIR for a new directory")
    log.info("%s is already trained with these settings (%s); reusing it (overwrite=true retrains)", name, out)
    return True
