"""Image classifiers: the paper's appendix C.1 fine-tuning recipe and small ResNets trained from scratch.

* ``image_finetune``: a pretrained classifier (a Hugging Face image-classification model, or torchvision:resnetN
  with its ImageNet weights) whose final layer is replaced by one with the dataset's classes; images resized to
  224x224 and normalised with the ImageNet mean/std; SGD (lr 1e-3, momentum 0.9), one epoch, cross-entropy.
* ``image_resnet``: a Hugging Face ResNet (ResNetConfig: stem of `width` channels, stage i of width * 2**i
  channels, `depths` blocks per stage) trained from a seeded init.

Both save a directory that the extraction stage loads like any model (``model.name_or_path=<out>``):
Hugging Face models with save_pretrained (safetensors) and their image processor (a ViTImageProcessor holding
exactly the preprocessing used in training); torchvision models as model.safetensors (the state dict) and a
config.json with ``torchvision_arch``, ``num_classes``, ``id2label`` and the preprocessing. training.json
records the run (losses, held-out accuracy, time, data provenance).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..extraction.config import DatasetSpec
from ..extraction.image_data import ImageData, Preprocessing, load_image_data
from ..extraction.images import TORCHVISION_ARCHS, TV_CONFIG_KEY, TV_PREFIX, torch_transform
from ..extraction.models import resolve_device
from .config import MARKER, TrainConfigError, reuse_trained
from .image_config import ImageTrainSpec

log = logging.getLogger(__name__)
_PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}


def _cap(data: ImageData, n: int | None) -> ImageData:
    if n is None or n >= data.n:
        return data
    keep = np.arange(n)
    return dataclasses.replace(data, labels=data.labels[keep], images=data.images.take(keep),
                               source_index=None if data.source_index is None else data.source_index[keep])


def _preprocessing(spec: ImageTrainSpec) -> Preprocessing:
    size = (spec.image_size, spec.image_size) if spec.image_size else None
    return Preprocessing(resize=size, crop=None, mean=tuple(spec.mean), std=tuple(spec.std),
                         interpolation=spec.interpolation)


def _hf_processor(spec: ImageTrainSpec):
    """A ViTImageProcessor doing this recipe's preprocessing: saved with the model, used by the extraction."""
    from transformers import ViTImageProcessor

    s = spec.image_size
    return ViTImageProcessor(do_resize=s is not None, size={"height": s or 224, "width": s or 224},
                             resample=_PIL_RESAMPLE[spec.interpolation], do_rescale=True, rescale_factor=1 / 255,
                             do_normalize=True, image_mean=list(spec.mean), image_std=list(spec.std))


def build_classifier(spec: ImageTrainSpec, classes: list[str]):
    """(model, kind "hf" | "torchvision", processor or None, base description) with len(classes) outputs."""
    n = len(classes)
    id2label = dict(enumerate(classes))
    label2id = {c: i for i, c in id2label.items()}
    if spec.arch == "image_resnet":
        from transformers import ResNetConfig, ResNetForImageClassification

        cfg = ResNetConfig(num_channels=3, embedding_size=spec.width,
                           hidden_sizes=[spec.width * 2 ** i for i in range(len(spec.depths))], depths=list(spec.depths),
                           layer_type=spec.layer_type, num_labels=n, id2label=id2label, label2id=label2id)
        return ResNetForImageClassification(cfg), "hf", _hf_processor(spec), "random init (seeded)"
    if spec.model.startswith(TV_PREFIX):
        from ..extraction.images import import_torchvision

        torchvision = import_torchvision()

        arch = spec.model[len(TV_PREFIX):]
        if arch not in TORCHVISION_ARCHS:
            raise TrainConfigError(f"train.model={spec.model!r}: torchvision models are "
                                   f"{[TV_PREFIX + a for a in TORCHVISION_ARCHS]}")
        weights = torchvision.models.get_model_weights(arch).DEFAULT if spec.pretrained else None
        try:
            model = torchvision.models.get_model(arch, weights=weights)
        except Exception as e:  # noqa: BLE001  offline: the download fails
            raise TrainConfigError(f"could not load torchvision weights {weights} ({type(e).__name__}: {e}); "
                                   "download them once (torch hub cache) or set train.pretrained=false") from None
        model.fc = torch.nn.Linear(model.fc.in_features, n)  # the new final layer: the dataset's classes
        return model, "torchvision", None, f"torchvision {arch} ({weights or 'random init'})"
    from transformers import AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(spec.model, num_labels=n, id2label=id2label,
                                                                label2id=label2id, ignore_mismatched_sizes=True)
    except OSError as e:
        raise TrainConfigError(f"could not load train.model={spec.model!r} ({e}); pass a local directory") from None
    return model, "hf", _hf_processor(spec), spec.model


def _forward(model, kind: str, x: torch.Tensor) -> torch.Tensor:
    return model(x) if kind == "torchvision" else model(pixel_values=x).logits


@torch.no_grad()
def evaluate(model, kind: str, transform, data: ImageData, device, batch_size: int) -> dict:
    model.eval()
    correct, nll = 0, 0.0
    for lo in range(0, data.n, batch_size):
        hi = min(lo + batch_size, data.n)
        z = _forward(model, kind, transform(data.images.get(lo, hi)).to(device)).double()
        y = torch.from_numpy(data.labels[lo:hi]).to(device)
        nll += float(torch.nn.functional.cross_entropy(z, y, reduction="sum"))
        top = z.max(1, keepdim=True).values
        correct += int(((z.gather(1, y[:, None]) == top).squeeze(1) & ((z == top).sum(1) == 1)).sum())
    return {"n": data.n, "acc": correct / data.n, "nll_mean": nll / data.n}


def train_image_classifier(spec: ImageTrainSpec, dataset_spec: DatasetSpec, out: Path, overwrite: bool = False,
                           resolved: dict | None = None, progress: bool = True) -> Path:
    """Train and save to ``out``; an already trained model there is reused unless ``overwrite``."""
    out = Path(out)
    if reuse_trained(out, spec.name, resolved, overwrite):
        return out
    from .run import seed_everything

    if out.exists() and not (out.is_dir() and ((out / MARKER).exists() or not any(out.iterdir()))):
        raise TrainConfigError(f"out={out} exists and is not a model trained here (no {MARKER}); nothing was "
                               "deleted: choose another out= or move it away")
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(spec.device)
    data = _cap(load_image_data(dataset_spec), spec.max_train_examples)
    held = None
    if spec.eval_split:
        if spec.eval_split == dataset_spec.split:
            raise TrainConfigError(f"train.eval_split={spec.eval_split!r} is the training split; choose a held-out one")
        held = load_image_data(dataclasses.replace(dataset_spec, split=spec.eval_split, n_documents=None))
        if held.classes != data.classes:
            raise TrainConfigError(f"split {spec.eval_split!r} has other classes than {dataset_spec.split!r}")
    seed_everything(spec.seed)
    model, kind, processor, base = build_classifier(spec, data.classes)
    model.to(device)
    if processor is not None:
        transform = lambda images: processor(images=images, return_tensors="pt")["pixel_values"]  # noqa: E731
    else:
        transform = torch_transform(_preprocessing(spec))
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    B = min(spec.batch_size, data.n)
    steps_per_epoch = data.n // B  # the last partial batch is dropped (batch norm needs > 1 example)
    total = steps_per_epoch * spec.epochs if spec.max_steps is None else min(spec.max_steps, steps_per_epoch * spec.epochs)
    log.info("%s: %d training images (%s/%s), %d classes, %s, %d steps of %d on %s", spec.name, data.n,
             dataset_spec.name, dataset_spec.split, data.n_classes, base, total, B, device)
    gen = torch.Generator().manual_seed(spec.seed)
    losses, held_out, step = [], [], 0
    bar = tqdm(total=total, desc=spec.name, disable=not progress, unit="step")
    t0 = time.time()
    for epoch in range(spec.epochs):
        if step >= total:
            break
        model.train()
        order = torch.randperm(data.n, generator=gen).numpy()
        run_loss, count = 0.0, 0
        for s in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[s * B:(s + 1) * B]
            x = transform(data.images.take(idx).get(0, len(idx))).to(device)
            y = torch.from_numpy(data.labels[idx]).to(device)
            loss = torch.nn.functional.cross_entropy(_forward(model, kind, x).float(), y)
            if not math.isfinite(loss.item()):
                raise TrainConfigError(f"the training loss became {loss.item()} at step {step}: lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            run_loss += loss.item()
            count += 1
            bar.update(1)
            bar.set_postfix(loss=f"{run_loss / count:.3f}")
        losses.append(run_loss / max(count, 1))
        msg = f"epoch {epoch + 1}: train loss {losses[-1]:.4f}"
        if held is not None:
            held_out.append(evaluate(model, kind, transform, held, device, max(B, 64)))
            msg += f", {spec.eval_split} ACC {held_out[-1]['acc']:.4f} NLL {held_out[-1]['nll_mean']:.4f}"
        log.info("%s %s", spec.name, msg)
    bar.close()
    seconds = time.time() - t0
    model.eval().to("cpu")
    n_params = sum(p.numel() for p in model.parameters())
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if kind == "hf":
        model.save_pretrained(tmp)  # safetensors
        processor.save_pretrained(tmp)
    else:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        pre = _preprocessing(spec).record("training recipe")
        pre.pop("source")
        pre = {k: pre[k] for k in ("resize", "crop", "mean", "std", "interpolation")}
        cfg = {TV_CONFIG_KEY: spec.model[len(TV_PREFIX):], "num_classes": data.n_classes,
               "id2label": {str(i): c for i, c in enumerate(data.classes)}, "preprocessing": pre}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    meta = {"name": spec.name, "arch": spec.arch, "base": base, "n_params": n_params, "classes": data.classes,
            "train_examples": data.n, "steps": step, "train_losses": losses,
            "held_out": {"split": spec.eval_split, "per_epoch": held_out} if held is not None else None,
            "seconds": round(seconds, 1), "device": str(device), "dataset": data.meta, "config": resolved or {}}
    (tmp / MARKER).write_text(json.dumps(meta, indent=2, default=str))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)  # the directory appears complete or not at all
    shown = f", {spec.eval_split} ACC {held_out[-1]['acc']:.4f}" if held_out else ""
    log.info("%s: %d parameters, final train loss %.3f%s, %.1fs; model saved to %s", spec.name, n_params,
             losses[-1] if losses else float("nan"), shown, seconds, out)
    return out
