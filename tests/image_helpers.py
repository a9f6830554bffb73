"""Builders of tiny image datasets (in their release formats) and tiny classifiers, and an independent float64
reference of the store's arrays computed from logits."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- datasets


def write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_image_folder(root: Path, classes=("cat", "dog", "emu"), per_class=(3, 2, 4), size=(20, 24), seed=0,
                      grey_first: bool = True) -> Path:
    """root/<class>/img<i>.png, random pixels; the first image of the first class is greyscale (mode L)."""
    rng = np.random.default_rng(seed)
    for c, n in zip(classes, per_class):
        for i in range(n):
            px = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            if grey_first and c == classes[0] and i == 0:
                px = px[..., 0]
            write_png(root / c / f"img{i}.png", px)
    (root / classes[0] / "notes.txt").write_text("not an image: ignored")
    return root


def folder_images(root: Path) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """What the image_folder loader should produce, read here independently with PIL."""
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((root / c).glob("*.png")):
            images.append(np.array(Image.open(f).convert("RGB")))
            labels.append(i)
    return images, np.array(labels), classes


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(root: Path, n_per_batch=4, n_train_batches=5, seed=0, labels=None) -> Path:
    """root/cifar-10-batches-py/{data_batch_1..n, test_batch, batches.meta} as pickled dicts with bytes keys
    (the python release's format); returns the release folder."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, n_train_batches + 1)] + ["test_batch"]:
        lab = list(rng.integers(0, 10, n_per_batch)) if labels is None else list(labels)
        _dump(d / name, {b"batch_label": name.encode(), b"labels": [int(x) for x in lab],
                         b"data": rng.integers(0, 256, size=(len(lab), 3072), dtype=np.uint8),
                         b"filenames": [f"{name}_{i}.png".encode() for i in range(len(lab))]})
    _dump(d / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": n_per_batch,
                               b"num_vis": 3072})
    return d


def make_cifar100(root: Path, n_train=6, n_test=5, seed=1) -> Path:
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        _dump(d / name, {b"filenames": [b"x.png"] * n, b"fine_labels": [int(x) for x in fine],
                         b"coarse_labels": [int(x) // 5 for x in fine],
                         b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)})
    _dump(d / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                       b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return d


def cifar_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 and labels of one CIFAR batch file, decoded here independently."""
    with open(path, "rb") as f:
        b = pickle.load(f, encoding="bytes")
    data = np.asarray(b[b"data"])
    img = np.stack([data[:, c * 1024:(c + 1) * 1024].reshape(-1, 32, 32) for c in range(3)], axis=-1)
    return img, np.asarray(b.get(b"labels", b.get(b"fine_labels")))


def make_tiny_imagenet(root: Path, wnids=("n02", "n01", "n03"), n_train=2, n_val=2, size=8, seed=0) -> Path:
    """The Tiny ImageNet-200 layout with a few classes (wnids.txt deliberately not sorted)."""
    rng = np.random.default_rng(seed)
    d = root / "tiny-imagenet-200"
    d.mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (d / "words.txt").write_text("".join(f"{w}\t{w}-word, other\n" for w in wnids) + "n99\tunused\n")
    for w in wnids:
        for i in range(n_train):
            write_png_as_jpeg(d / "train" / w / "images" / f"{w}_{i}.JPEG", rng.integers(0, 256, (size, size, 3), np.uint8))
        (d / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for j in range(n_val * len(wnids)):
        w = wnids[(j * 2) % len(wnids)]
        write_png_as_jpeg(d / "val" / "images" / f"val_{j}.JPEG", rng.integers(0, 256, (size, size, 3), np.uint8))
        lines.append(f"val_{j}.JPEG\t{w}\t0\t0\t{size}\t{size}")
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return d


def write_png_as_jpeg(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def make_digits_csv(path: Path, n=40, side=28, max_value=255, seed=0, label_override=None) -> Path:
    rng = np.random.default_rng(seed)
    pix = rng.integers(0, max_value + 1, size=(n, side * side))
    lab = np.arange(n) % 10 if label_override is None else np.asarray(label_override)
    rows = np.concatenate([pix, lab[:, None]], 1)
    path.write_text("\n".join(",".join(str(int(v)) for v in r) for r in rows) + "\n")
    return path


# ---------------------------------------------------------------- models


def make_hf_resnet(directory: Path, n_classes: int, size: int = 32, seed: int = 0, id2label=None,
                   processor: bool = True) -> Path:
    """A tiny random-init Hugging Face ResNet (stem 8, stages 8 / 16, one basic block each) saved with a
    ViTImageProcessor that resizes to size x size (bilinear) and normalises with mean/std 0.5."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    kw = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                       num_labels=n_classes, **kw)
    model = ResNetForImageClassification(cfg).eval()
    with torch.no_grad():  # a spread of logits (a fresh head gives near-uniform, tie-prone outputs)
        model.classifier[-1].weight.mul_(40.0)
    model.save_pretrained(directory)
    if processor:
        ViTImageProcessor(size={"height": size, "width": size}, resample=2, image_mean=[0.5] * 3,
                          image_std=[0.5] * 3).save_pretrained(directory)
    return directory


def hf_logits(directory: Path, images: list[np.ndarray]) -> np.ndarray:
    """A direct forward pass: the saved processor and model, float64 logits."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    proc = AutoImageProcessor.from_pretrained(directory)
    model = AutoModelForImageClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        x = proc(images=images, return_tensors="pt")["pixel_values"]
        return model(pixel_values=x).logits.double().numpy()


# ---------------------------------------------------------------- reference


def reference(logits: np.ndarray, targets: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Every stored array from float64 logits by plain NumPy: log-softmax, rank/ties by comparison, top-k by a
    stable sort, the tail as the log of the summed probabilities outside the top k."""
    z = np.asarray(logits, np.float64)
    n, v = z.shape
    m = z.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
    lp = z - lse[:, None]
    t = np.asarray(targets)
    zt = z[np.arange(n), t]
    order = np.argsort(-z, axis=1, kind="stable")[:, :k]
    p = np.exp(lp)
    inside = np.zeros_like(p, bool)
    np.put_along_axis(inside, order, True, axis=1)
    tail = np.where(inside, 0.0, p).sum(1)
    with np.errstate(divide="ignore"):
        tail_log = np.log(tail)
    return {"target_logprob": lp[np.arange(n), t], "target_rank": (z > zt[:, None]).sum(1),
            "target_ties": (z == zt[:, None]).sum(1) - 1, "topk_ids": order,
            "topk_logprobs": np.take_along_axis(lp, order, 1), "tail_logmass": tail_log,
            "entropy": -(p * lp).sum(1)}
