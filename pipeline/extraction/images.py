"""Image classification -> a store of kind "classification" (DESIGN section 8, the paper's appendix C.1).

One position per example, in the dataset's order: `targets` = the label, `doc_id` = the example's index in the
split, the top-K / target / tail / entropy arrays from the classifier's float32 logits exactly as for text
(`head.score_logits_chunked`: float64 reductions, each stored float32 rounded once). There is no text:
n_chars / n_bytes are absent. The store's `tokenizer` section is the label set (name, vocab_hash = sha256 of the
JSON list of class names, n_classes), so two classifiers pair only over the same labels; `protocol` records the
preprocessing (resize, crop, mean, std, interpolation and where it came from) with context_length / stride null.

Models (`model.name_or_path`):
  * a Hugging Face image-classification model (hub id or save_pretrained directory): AutoModelForImageClassification,
    and its AutoImageProcessor preprocesses (its settings are recorded);
  * `torchvision:resnet18` .. `torchvision:resnet152`: torchvision's ImageNet weights when `model.pretrained=true`
    (preprocessing: the weights' own transforms), a state dict `model.checkpoint`, or a seeded random init with
    `model.num_classes` outputs (default: the dataset's classes);
  * a directory written by the fine-tuning recipe for a torchvision model (config.json with `torchvision_arch`,
    model.safetensors, its preprocessing in config.json).
`model.preprocessing` overrides the model's preprocessing; a model without one uses `dataset.image.preprocessing`.
Model dtype `auto` is float32 on every device for classifiers (bf16 logits tie often; the model is small).

Order (as the text path): settings and paths are checked first, then the store's lock is taken (at once for
`store=`, else after the dataset and the preprocessing are known, before the model loads), a complete store is
refused or reused (overwrite / skip_existing), and a partial store of the same setting resumes at its last whole
chunk, ending bit-identical to an uninterrupted run (batches are a fixed partition of the examples).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..store import StoreWriter, config_hash, open_store, store_path
from ..store.lock import WriterLock
from .config import ModelSpec, RunSpec
from .errors import ConfigError, DatasetNotFoundError, ImageDataError, LabelSpaceError, ModelNotFoundError
from .head import head_chunk_size, score_logits_chunked
from .image_data import ImageData, Preprocessing, dataset_preprocessing, labels_sha256, load_image_data
from .models import _looks_local, _sha256_file, directory_fingerprint, resolve_device

log = logging.getLogger(__name__)

TV_PREFIX = "torchvision:"
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TV_CONFIG_KEY = "torchvision_arch"  # config.json of a saved torchvision classifier
RANDOM_INIT_SEED = 0
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


# ---------------------------------------------------------------- the loaded classifier


@dataclasses.dataclass
class ImageClassifier:
    model: torch.nn.Module
    kind: str                                          # "hf" | "torchvision"
    device: torch.device
    dtype: torch.dtype
    n_classes: int
    transform: Callable[[list[np.ndarray]], torch.Tensor]  # RGB uint8 (H, W, 3) images -> (B, 3, h, w) float
    preprocessing: dict                                # recorded in the store's protocol
    info: dict                                         # the store's `model` section
    id2label: dict[int, str] | None = None

    @torch.no_grad()
    def logits(self, images: list[np.ndarray]) -> torch.Tensor:
        """(B, n_classes) float32 logits of a batch of images."""
        x = self.transform(images).to(self.device, self.dtype)
        out = self.model(x) if self.kind == "torchvision" else self.model(pixel_values=x).logits
        return out.float()


def torch_transform(p: Preprocessing) -> Callable[[list[np.ndarray]], torch.Tensor]:
    """The preprocessing as a function of a list of RGB uint8 (H, W, 3) arrays (see `Preprocessing`). Resizing an
    int r makes the shorter side r and the other int(r * long / short) (torchvision's rule); the center crop's
    offset is round((size - crop) / 2)."""
    mean = torch.tensor(p.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(p.std, dtype=torch.float32).view(3, 1, 1)

    def size_of(h: int, w: int, r):
        if isinstance(r, tuple):
            return r
        if h <= w:
            return r, int(r * w / h)
        return int(r * h / w), r

    def one(im: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).to(torch.float32).div_(255.0)
        if p.resize is not None:
            size = size_of(x.shape[1], x.shape[2], p.resize)
            if size != tuple(x.shape[1:]):
                kw = {} if p.interpolation == "nearest" else {"antialias": True, "align_corners": False}
                x = torch.nn.functional.interpolate(x[None], size=size, mode=p.interpolation, **kw)[0]
        if p.crop is not None:
            ch, cw = p.crop if isinstance(p.crop, tuple) else (p.crop, p.crop)
            h, w = x.shape[1:]
            if ch > h or cw > w:
                raise ImageDataError(f"a {h}x{w} image is smaller than the center crop {ch}x{cw}; resize first "
                                     "(preprocessing.resize)")
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            x = x[:, top:top + ch, left:left + cw]
        return (x - mean) / std

    def transform(images: list[np.ndarray]) -> torch.Tensor:
        xs = [one(im) for im in images]
        shapes = sorted({tuple(x.shape[1:]) for x in xs})
        if len(shapes) > 1:
            raise ImageDataError(f"images of different sizes {shapes[:3]} in one batch; set a resize (and crop) in "
                                 "dataset.image.preprocessing or model.preprocessing so they share one size")
        return torch.stack(xs)

    return transform


def _plain(x):
    """JSON types only (enums, tuples, numpy numbers), so the record hashes and stores as it reads."""
    return json.loads(json.dumps(x, default=lambda o: int(o) if hasattr(o, "__int__") else str(o)))


def processor_record(processor) -> dict:
    """The preprocessing of a Hugging Face image processor, for the store's protocol."""
    d = processor.to_dict()
    keys = ("do_resize", "size", "crop_pct", "do_center_crop", "crop_size", "resample", "do_rescale",
            "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")
    rec = {k: d[k] for k in keys if k in d}
    rec = _plain(rec)
    resample = rec.get("resample")
    return {"resize": rec.get("size") if rec.get("do_resize", True) else None,
            "crop": rec.get("crop_size") if rec.get("do_center_crop") else None,
            "mean": rec.get("image_mean") if rec.get("do_normalize", True) else None,
            "std": rec.get("image_std") if rec.get("do_normalize", True) else None,
            "interpolation": _RESAMPLE.get(resample, resample) if isinstance(resample, int) else resample,
            "source": f"processor config ({type(processor).__name__})", "processor": rec}


# ---------------------------------------------------------------- where a model comes from


def _source(spec: ModelSpec) -> tuple[str, str]:
    """('torchvision', arch) | ('torchvision_dir', path) | ('hf', path or hub id)."""
    src = spec.name_or_path
    if src.startswith(TV_PREFIX):
        arch = src[len(TV_PREFIX):]
        if arch not in TORCHVISION_ARCHS:
            raise ConfigError(f"model.name_or_path={src!r}: torchvision models are {[TV_PREFIX + a for a in TORCHVISION_ARCHS]}")
        return "torchvision", arch
    local = Path(src).expanduser()
    if (local / "config.json").is_file():
        try:
            cfg = json.loads((local / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(f"{local / 'config.json'} is not readable JSON ({e})") from None
        if isinstance(cfg, dict) and TV_CONFIG_KEY in cfg:
            return "torchvision_dir", str(local)
    return "hf", src


def preflight_images(spec: RunSpec) -> None:
    """Model and dataset paths, before anything loads."""
    m = spec.model
    kind, src = _source(m)
    if kind == "hf":
        local = Path(src).expanduser()
        if _looks_local(src) and not local.exists():
            raise ModelNotFoundError(f"model.name_or_path={src!r}: no such directory; give a save_pretrained "
                                     "directory of an image classifier, a hub id (owner/name) or torchvision:resnetN")
        if local.is_dir() and not (local / "config.json").exists():
            raise ModelNotFoundError(f"model directory {local} has no config.json: is it a save_pretrained directory?")
    if m.checkpoint and not Path(m.checkpoint).expanduser().is_file():
        raise ModelNotFoundError(f"model.checkpoint={m.checkpoint} does not exist: give a .safetensors or .pt state dict")
    if m.checkpoint and kind != "torchvision":
        raise ConfigError("model.checkpoint applies to torchvision:<arch> models; a directory holds its own weights")
    if m.pretrained and m.checkpoint:
        raise ConfigError("model.pretrained=true and model.checkpoint both give weights: choose one")
    ds = spec.dataset
    if ds.path and not Path(ds.path).expanduser().exists():
        raise DatasetNotFoundError(f"dataset.path={ds.path} does not exist: check the path")
    ex = spec.extract
    if ex.store_embedding:
        raise ConfigError("extract.store_embedding=true: an image classifier has no input embedding matrix; drop it")
    if getattr(ex, "num_shards", 1) > 1:
        raise ConfigError("extract.num_shards > 1: image datasets are extracted by one writer (they are small); "
                          "drop extract.num_shards / extract.shard")
    if ex.context_length or ex.stride:
        log.warning("extract.context_length / extract.stride do not apply to image classification; ignored")


def resolve_dtype(spec: ModelSpec) -> torch.dtype:
    if spec.quantization:
        raise ConfigError(f"model.quantization={spec.quantization} is not supported for image classifiers")
    return {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[spec.dtype]


@dataclasses.dataclass
class _Prep:
    """What preprocesses the images, known before the model loads."""

    record: dict
    transform: Callable[[list[np.ndarray]], torch.Tensor]
    tv_config: dict | None = None     # torchvision directory: its config.json


def resolve_preprocessing(spec: RunSpec) -> _Prep:
    """model.preprocessing > the model's own (processor config, torchvision weights, saved directory) > the
    dataset config's; no preprocessing at all is a ConfigError."""
    m = spec.model
    kind, src = _source(m)
    tv_config = json.loads((Path(src) / "config.json").read_text()) if kind == "torchvision_dir" else None
    if m.preprocessing:
        p = Preprocessing.from_dict(dict(m.preprocessing), "model.preprocessing")
        return _Prep(p.record("model.preprocessing (config)"), torch_transform(p), tv_config)
    if kind == "hf":
        processor = _hf_processor(m, src)
        if processor is not None:
            return _Prep(processor_record(processor),
                         lambda images: processor(images=images, return_tensors="pt")["pixel_values"], None)
    elif kind == "torchvision_dir" and tv_config.get("preprocessing"):
        p = Preprocessing.from_dict(dict(tv_config["preprocessing"]), f"{src}/config.json preprocessing")
        return _Prep(p.record(f"model directory ({src}/config.json)"), torch_transform(p), tv_config)
    elif kind == "torchvision" and m.pretrained:
        import torchvision

        weights = torchvision.models.get_model_weights(src).DEFAULT
        t = weights.transforms()
        p = Preprocessing(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]), mean=tuple(t.mean), std=tuple(t.std),
                          interpolation=t.interpolation.value)
        return _Prep(p.record(f"torchvision weights {weights}"), torch_transform(p), None)
    p = dataset_preprocessing(spec.dataset)
    if p is None:
        raise ConfigError(f"model {m.name!r} brings no preprocessing and dataset {spec.dataset.name!r} has none: set "
                          "model.preprocessing or dataset.image.preprocessing (resize, crop, mean, std)")
    return _Prep(p.record(f"dataset config ({spec.dataset.name})"), torch_transform(p), tv_config)


def _hf_processor(m: ModelSpec, src: str):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(src, revision=m.revision, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as e:  # no preprocessor_config.json: the dataset's preprocessing is used
        log.info("model %s has no image processor (%s); using the dataset's preprocessing", m.name, type(e).__name__)
        return None


def _count(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def load_classifier(spec: RunSpec, prep: _Prep, n_classes_hint: int | None = None) -> ImageClassifier:
    """Load the model of spec.model on its device, in eval mode, with the preprocessing `prep`."""
    m = spec.model
    kind, src = _source(m)
    device = resolve_device(m.device)
    dtype = resolve_dtype(m)
    info = {"name": m.name, "name_or_path": m.name_or_path, "revision": m.revision, "dtype": str(dtype).replace("torch.", ""),
            "quantization": None, "device": str(device), "head_path": "model_logits (float32)",
            "kernel_path": "PyTorch", "attn_implementation": None, "gguf_file": None}
    id2label = None
    if kind == "hf":
        model, extra, id2label = _load_hf(m, src, dtype)
        loaded_kind = "hf"
    else:
        model, extra, id2label = _load_torchvision(m, kind, src, prep.tv_config, n_classes_hint)
        model = model.to(dtype)
        loaded_kind = "torchvision"
    model.to(device).eval()
    n_classes = int(extra.pop("n_classes"))
    total = _count(model)
    info.update({"n_params": total, "n_params_nonembed": total,
                 "n_params_note": "counted on the loaded model; a classifier has no embedding matrix",
                 "n_classes": n_classes, "trust_remote_code": m.trust_remote_code,
                 "id2label": {str(k): v for k, v in id2label.items()} if id2label else None, **extra})
    return ImageClassifier(model, loaded_kind, device, dtype, n_classes, prep.transform, prep.record, info, id2label)


def _load_hf(m: ModelSpec, src: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForImageClassification

    common = {"revision": m.revision, "trust_remote_code": m.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(src, **common)
        model = AutoModelForImageClassification.from_pretrained(src, config=config, dtype=dtype, **common)
    except OSError as e:
        raise ModelNotFoundError(f"could not load image classifier {m.name_or_path!r} (revision {m.revision}): {e}. "
                                 "Offline? Download it and pass model.name_or_path=<directory>") from None
    except ValueError as e:  # e.g. a causal LM's config: no image-classification class for it
        raise ConfigError(f"model {m.name_or_path!r} is not an image-classification model ({e})") from None
    local = Path(src).expanduser()
    if local.is_dir():
        fingerprint = directory_fingerprint(local)
    else:
        commit = getattr(config, "_commit_hash", None)
        fingerprint = f"hub-commit:{commit}" if commit else None
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    return model, {"n_classes": int(config.num_labels), "architecture": type(model).__name__,
                   "model_type": config.model_type, "resolved_revision": getattr(config, "_commit_hash", None),
                   "source": "transformers", "fingerprint": fingerprint}, id2label


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  not a plain state dict: pickled code is never run
        raise ModelNotFoundError(f"{path} is not a state dict readable with weights_only=True ({e}); save "
                                 "model.state_dict() (safetensors preferred)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelNotFoundError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def import_torchvision():
    """torchvision, or a ConfigError saying how to get a build that matches the installed torch."""
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001  missing, or a build for another torch (e.g. CUDA wheel beside CPU torch)
        raise ConfigError(f"torchvision models need torchvision built for torch {torch.__version__} "
                          f"({type(e).__name__}: {e}); install the matching build (pip install -e '.[vision]' "
                          "beside the same torch index) or use a Hugging Face model (model.name_or_path=DIR)") from None
    return torchvision


def _load_torchvision(m: ModelSpec, kind: str, src: str, tv_config: dict | None, n_classes_hint: int | None):
    torchvision = import_torchvision()

    id2label = None
    if kind == "torchvision_dir":
        arch = tv_config[TV_CONFIG_KEY]
        if arch not in TORCHVISION_ARCHS:
            raise ConfigError(f"{src}/config.json: {TV_CONFIG_KEY}={arch!r} is not one of {TORCHVISION_ARCHS}")
        files = sorted(Path(src).glob("*.safetensors"))
        if len(files) != 1:
            raise ModelNotFoundError(f"{src} should hold one .safetensors file (the state dict); found {len(files)}")
        state = _state_dict(files[0])
        n = int(tv_config.get("num_classes") or state["fc.weight"].shape[0])
        id2label = {int(k): str(v) for k, v in (tv_config.get("id2label") or {}).items()} or None
        weights_note, fingerprint = f"state dict {files[0].name}", directory_fingerprint(Path(src))
    elif m.checkpoint:
        arch = src
        path = Path(m.checkpoint).expanduser()
        state = _state_dict(path)
        if "fc.weight" not in state:
            raise ModelNotFoundError(f"{path} has no fc.weight: not a torchvision ResNet state dict")
        n = int(state["fc.weight"].shape[0])
        weights_note, fingerprint = f"state dict {path}", f"sha256:{_sha256_file(path)}"
    elif m.pretrained:
        arch = src
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        if m.num_classes not in (None, len(weights.meta["categories"])):
            raise ConfigError(f"model.num_classes={m.num_classes} with pretrained {weights}: its head has "
                              f"{len(weights.meta['categories'])} classes; fine-tune it first (train=finetune_image)")
        try:
            model = torchvision.models.get_model(arch, weights=weights)
        except Exception as e:  # noqa: BLE001  offline: the download fails
            raise ModelNotFoundError(f"could not load torchvision weights {weights} ({type(e).__name__}: {e}); "
                                     "download them once (torch hub cache) or pass model.checkpoint=<file>") from None
        id2label = dict(enumerate(weights.meta["categories"]))
        return model, {"n_classes": len(id2label), "architecture": f"torchvision.models.{arch}", "model_type": arch,
                       "source": "torchvision", "weights": str(weights), "weights_url": weights.url,
                       "fingerprint": f"torchvision-weights:{weights.url}"}, id2label
    else:
        arch = src
        n = int(m.num_classes or n_classes_hint or 1000)
        torch.manual_seed(RANDOM_INIT_SEED)  # the same weights in every run: a partial store can resume
        model = torchvision.models.get_model(arch, weights=None, num_classes=n)
        return model, {"n_classes": n, "architecture": f"torchvision.models.{arch}", "model_type": arch,
                       "source": "torchvision", "weights": f"random init (torch.manual_seed({RANDOM_INIT_SEED}))",
                       "fingerprint": f"random-init:{arch}:{n}:seed{RANDOM_INIT_SEED}"}, None
    model = torchvision.models.get_model(arch, weights=None, num_classes=n)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelNotFoundError(f"the state dict ({weights_note}) does not fit torchvision {arch} with {n} classes: "
                                 f"{str(e).splitlines()[0]}") from None
    return model, {"n_classes": n, "architecture": f"torchvision.models.{arch}", "model_type": arch,
                   "source": "torchvision", "weights": weights_note, "fingerprint": fingerprint}, id2label


# ---------------------------------------------------------------- the run


def default_image_store(spec: RunSpec, dtype: torch.dtype, K: int, preprocessing: dict) -> Path:
    """stores/<dataset>/<split>/<model>/K<K>-lp16-float32-pp<8 hex of the preprocessing>.zarr: two
    preprocessings of one model never share a path."""
    lp = {"float16": "lp16", "float32": "lp32"}[spec.extract.logprob_dtype]
    pp = config_hash(preprocessing)[:8]
    tag = f"K{K}-{lp}-{str(dtype).replace('torch.', '')}-pp{pp}"
    return store_path(spec.stores_root, spec.dataset.name, spec.dataset.split, spec.model.name, tag)


def extract_classification(spec: RunSpec, lm: ImageClassifier | None = None):
    """Run one image-classification extraction to a complete store; returns the opened Store."""
    from .run import _take

    if lm is None:
        preflight_images(spec)
    lock = _take(Path(spec.store), spec) if spec.store else None
    try:
        data = load_image_data(spec.dataset)
        if spec.extract.max_positions and spec.extract.max_positions < data.n:
            keep = np.arange(spec.extract.max_positions)
            data = dataclasses.replace(data, labels=data.labels[keep], images=data.images.take(keep),
                                       source_index=None if data.source_index is None else data.source_index[keep])
            data.meta["n_examples"] = data.n
        prep = None if lm is not None else resolve_preprocessing(spec)
        record = lm.preprocessing if lm is not None else prep.record
        dtype = lm.dtype if lm is not None else resolve_dtype(spec.model)
        K = min(spec.extract.top_k, data.n_classes)
        path = Path(spec.store) if spec.store else default_image_store(spec, dtype, K, record)
        if lock is None:
            lock = _take(path, spec)
        if lm is None:
            from .run import configure_torch

            configure_torch(spec)
            lm = load_classifier(spec, prep, data.n_classes)
        return _write(spec, lm, data, K, path, lock)
    finally:
        if lock is not None:
            lock.release()


def _check_label_space(spec: RunSpec, lm: ImageClassifier, data: ImageData) -> None:
    if lm.n_classes != data.n_classes:
        raise LabelSpaceError(
            f"model {spec.model.name!r} has {lm.n_classes} outputs but dataset {spec.dataset.name!r} has "
            f"{data.n_classes} classes; use a model trained on these classes (fine-tune one: python -m pipeline.train "
            "train=finetune_image ...), or for torchvision:<arch> random init set model.num_classes")
    if lm.id2label:
        names = [lm.id2label.get(i) for i in range(lm.n_classes)]
        generic = all(n is None or n == f"LABEL_{i}" for i, n in enumerate(names))
        if not generic and names != list(data.classes):
            log.warning("model %s's id2label differs from dataset %s's class names (first: %r vs %r); labels are "
                        "matched by index", spec.model.name, spec.dataset.name, names[:3], data.classes[:3])


def provenance(spec: RunSpec, lm: ImageClassifier, data: ImageData, K: int) -> dict:
    from .run import _git, _versions

    versions = _versions()
    try:
        import torchvision

        versions["torchvision"] = torchvision.__version__
    except Exception:  # noqa: BLE001  only recorded
        versions["torchvision"] = None
    return {
        "model": lm.info,
        "tokenizer": {"name": data.meta["label_set"], "class": "label set", "vocab_hash": labels_sha256(data.classes),
                      "n_classes": data.n_classes, "vocab_size": data.n_classes},
        "dataset": data.meta,
        "protocol": {"scoring": "classification", "context_length": None, "stride": None, "top_k": K,
                     "top_k_requested": spec.extract.top_k, "logprob_dtype": spec.extract.logprob_dtype,
                     "entropy": spec.extract.entropy, "batch_size": spec.model.batch_size,
                     "max_positions": spec.extract.max_positions, "preprocessing": lm.preprocessing},
        "runtime": {"tf32": spec.extract.tf32, "deterministic": spec.extract.deterministic,
                    "torch_threads": torch.get_num_threads(), "versions": versions, **_git()},
        "config": spec.resolved,
    }


def image_setting_hash(attrs: dict) -> str:
    """run.setting_hash (model weights, label set, dataset name/split, protocol with the preprocessing) plus what
    identifies the examples: their sha256, the seeded split, the cap."""
    from .run import setting_hash

    d = attrs["dataset"]
    keys = ("data_sha256", "label_field", "split_fractions", "seed", "n_examples", "labels_sha256")
    return config_hash({"setting": setting_hash(attrs), "examples": {k: d.get(k) for k in keys}})


def _write(spec: RunSpec, lm: ImageClassifier, data: ImageData, K: int, path: Path, lock: WriterLock):
    from .run import _complete_store, _metrics

    _check_label_space(spec, lm, data)
    attrs = _plain(provenance(spec, lm, data, K))
    h = image_setting_hash(attrs)
    if spec.skip_existing and not spec.overwrite:
        done = _complete_store(path, h)
        if done is not None:
            return done
    N, B = data.n, spec.model.batch_size
    n_batches = math.ceil(N / B)
    chunk = spec.extract.head_chunk or head_chunk_size(lm.n_classes, spec.extract.head_memory_mb, lm.device.type)
    lp_dtype = np.dtype(spec.extract.logprob_dtype)
    log.info("extracting %s on %s/%s: %d examples, %d classes, K=%d, preprocessing from %s -> %s", spec.model.name,
             spec.dataset.name, spec.dataset.split, N, data.n_classes, K, lm.preprocessing["source"], path)
    optional = ("entropy",) if spec.extract.entropy else ()
    writer = StoreWriter(path, n_positions=N, top_k=spec.extract.top_k, n_classes=lm.n_classes,
                         logprob_dtype=spec.extract.logprob_dtype, attrs=attrs, setting_hash=h,
                         chunk_size=spec.extract.chunk_size, overwrite=spec.overwrite, optional=optional, lock=lock,
                         kind="classification")
    with writer:
        if spec.extract.store_vocab:
            writer.write_table("vocab", np.array(list(data.display or data.classes), dtype=object))
        if data.source_index is not None:
            writer.write_table("example_source_index", data.source_index.astype(np.int32))
        b0 = writer.n_done // B  # the batch holding the resume point; rows already stored are skipped
        keep: dict[str, list] = {"target_logprob": [], "target_rank": [], "target_ties": []}
        if b0 * B > 0:  # resumed: the prefix's metrics come from the store
            prev = open_store(path, allow_partial=True).read(list(keep), 0, b0 * B)
            for k in keep:
                keep[k].append(prev[k])
        t0 = time.perf_counter()
        bar = tqdm(total=N, initial=b0 * B, unit="img", disable=not spec.extract.progress,
                   desc=f"{spec.model.name}/{spec.dataset.name}", smoothing=0.05)
        for b in range(b0, n_batches):
            lo, hi = b * B, min((b + 1) * B, N)
            z = lm.logits(data.images.get(lo, hi))
            if z.shape != (hi - lo, lm.n_classes):
                raise LabelSpaceError(f"model {spec.model.name!r} returned logits of shape {tuple(z.shape)} for "
                                      f"{hi - lo} images; expected ({hi - lo}, {lm.n_classes})")
            tgt = torch.from_numpy(data.labels[lo:hi]).to(z.device)
            out = score_logits_chunked(z, tgt, K, spec.extract.entropy, chunk, f"(examples {lo}..{hi})")
            out["topk_logprobs"] = out["topk_logprobs"].astype(lp_dtype)
            writer.write(lo, targets=data.labels[lo:hi].astype(np.int32), doc_id=np.arange(lo, hi, dtype=np.int32),
                         **out)
            for k in keep:
                keep[k].append(out[k])
            bar.update(hi - lo)
        bar.close()
        elapsed = time.perf_counter() - t0
        got = {k: np.concatenate(v) for k, v in keep.items()}
        zeros = np.zeros(N, np.int64)
        m = _metrics(got["target_logprob"], (got["target_rank"] == 0) & (got["target_ties"] == 0), zeros, zeros)
        metrics = {k: m[k] for k in ("n_positions", "nll_sum_nats", "nll_mean", "ppl", "acc")}
        start = b0 * B
        metrics.update({"elapsed_s_this_run": elapsed, "examples_per_s_this_run": (N - start) / elapsed if elapsed else None,
                        "resumed_from": start})
        store = writer.close(extra_attrs={"metrics": metrics})
    log.info("%s on %s/%s: ACC %.4f  NLL %.4f  PPL %.4f  (%d examples, %.1f img/s) -> %s", spec.model.name,
             spec.dataset.name, spec.dataset.split, metrics["acc"], metrics["nll_mean"], metrics["ppl"], N,
             metrics["examples_per_s_this_run"] or 0.0, path)
    return store
