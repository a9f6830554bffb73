"""Typed, frozen view of an image-classifier training config (conf/train/finetune_image.yaml,
conf/train/resnet_digits.yaml); torch-free, so settings are checked before torch loads."""

from __future__ import annotations

import dataclasses
import re

from .config import TrainConfigError

IMAGE_ARCHS = ("image_finetune", "image_resnet")


@dataclasses.dataclass(frozen=True)
class ImageTrainSpec:
    name: str
    arch: str                               # image_finetune | image_resnet
    # image_finetune (the paper's appendix C.1): a pretrained classifier whose final layer is replaced by one
    # with the dataset's classes; an HF image-classification model (hub id / directory) or torchvision:resnetN
    model: str | None = None
    pretrained: bool = True                 # torchvision: start from its ImageNet weights
    # image_resnet (from scratch): a Hugging Face ResNet (ResNetConfig) of these sizes
    width: int = 16                         # stem channels; stage i has width * 2**i channels
    depths: tuple[int, ...] = (1, 1)        # residual blocks per stage
    layer_type: str = "basic"               # basic | bottleneck
    # preprocessing (saved with the model, so extraction uses the same): resize to image_size x image_size
    # (null: keep), scale to [0, 1], normalise with mean / std
    image_size: int | None = None
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    optimizer: str = "sgd"                  # sgd | adam
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 32
    max_steps: int | None = None            # cap (smoke runs)
    max_train_examples: int | None = None   # cap of the training split (smoke runs)
    eval_split: str | None = None           # evaluated after each epoch (accuracy logged and saved), never trained on
    seed: int = 42
    device: str = "auto"
    num_threads: int | None = None          # torch CPU threads (null: torch's default)

    def __post_init__(self):
        if self.arch not in IMAGE_ARCHS:
            raise TrainConfigError(f"train.arch={self.arch!r}: image classifiers use one of {IMAGE_ARCHS}")
        if self.arch == "image_finetune" and not self.model:
            raise TrainConfigError("train.model is required with train=finetune_image: an HF image classifier "
                                   "(hub id or directory) or torchvision:resnet18..152")
        if self.optimizer not in ("sgd", "adam"):
            raise TrainConfigError(f"train.optimizer={self.optimizer!r}: use sgd or adam")
        if self.layer_type not in ("basic", "bottleneck"):
            raise TrainConfigError(f"train.layer_type={self.layer_type!r}: use basic or bottleneck")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise TrainConfigError(f"train.interpolation={self.interpolation!r}: use bilinear, bicubic or nearest")
        for key in ("epochs", "batch_size", "width"):
            if getattr(self, key) < 1:
                raise TrainConfigError(f"train.{key}={getattr(self, key)} must be >= 1")
        if not self.depths or any(d < 1 for d in self.depths):
            raise TrainConfigError(f"train.depths={list(self.depths)} must be a non-empty list of positive ints")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise TrainConfigError("train.mean and train.std need three values (RGB), std positive")
        if self.lr <= 0:
            raise TrainConfigError(f"train.lr={self.lr} must be positive")


def image_train_spec_from_dict(d: dict) -> ImageTrainSpec:
    names = {f.name for f in dataclasses.fields(ImageTrainSpec)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise TrainConfigError(f"unknown key(s) {unknown} in config group 'train' ({d.get('arch')}); known: {sorted(names)}")
    d = dict(d)
    if isinstance(d.get("name"), str):  # a directory name under _models/: hub ids and torchvision:<arch> flattened
        d["name"] = re.sub(r"[^A-Za-z0-9._=-]+", "-", d["name"]).strip("-") or "image-classifier"
    for key in ("depths", "mean", "std"):
        if key in d and d[key] is not None:
            d[key] = tuple(d[key])
    try:
        return ImageTrainSpec(**d)
    except TypeError as e:
        raise TrainConfigError(f"config group 'train': {e}") from None
