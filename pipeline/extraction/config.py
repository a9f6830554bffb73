"""Typed, frozen views of the extraction config; library code never sees a DictConfig."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    name_or_path: str                   # hub id, local directory, or 'package:<module>' (GGUF shipped in a package)
    revision: str | None = None
    gguf_file: str | None = None        # GGUF file name inside name_or_path (dequantised once, cached)
    dtype: str = "auto"                 # auto | float32 | bfloat16 | float16 (auto: fp32 on CPU, bf16 on CUDA)
    quantization: str | None = None     # None | 4bit | 8bit (bitsandbytes, CUDA only)
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    batch_size: int = 1
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    max_length: int | None = None       # override of the model's maximum context
    cache_dir: str | None = None        # where dequantised GGUF models are cached
    # image classifiers (pipeline/extraction/images.py): 'torchvision:resnet18' etc. load torchvision's ImageNet
    # weights when pretrained, else a random init with num_classes outputs, or the state dict `checkpoint`
    # (.safetensors, or .pt/.pth read with weights_only=True); `preprocessing` overrides the processor config's
    pretrained: bool = False
    num_classes: int | None = None
    checkpoint: str | None = None
    preprocessing: dict[str, Any] | None = None

    def __post_init__(self):
        if not self.name_or_path:
            raise ConfigError("model.name_or_path is empty: give a hub id, a local directory or a named model=...")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype={self.dtype!r}: use auto, float32, bfloat16 or float16")
        if self.quantization not in (None, "4bit", "8bit"):
            raise ConfigError(f"model.quantization={self.quantization!r}: use null, 4bit or 8bit")
        if self.batch_size < 1:
            raise ConfigError(f"model.batch_size={self.batch_size} must be >= 1")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    split: str
    loader: str                         # hf_files | text8 | lm1b | pile | text_file | wiki_vital (documents);
                                        # lambada_last_word | cbt | arc (task items, pipeline/extraction/tasks.py)
    hub_id: str | None = None
    revision: str | None = None
    url: str | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)        # split -> file glob / member
    release_files: dict[str, str] = dataclasses.field(default_factory=dict)  # split -> the original release's
                                        # file, looked for under a dataset.path directory when `files` is not there
    path: str | None = None             # local copy in the same format as the source
    text_field: str = "text"
    documents: str = "rows"             # rows | wikitext_articles | lines | whole
    text_sha256: dict[str, str | None] = dataclasses.field(default_factory=dict)
    n_documents: int | None = None      # sample size (pile) or cap
    seed: int = 0
    scoring: str = "independent"
    separator: str = "\n\n"
    bos: str = "document"
    task_protocol: str | None = None    # task datasets: how items become context/continuation pairs
    # sequence datasets (loaders fasta / sequence_csv; pipeline/extraction/sequences.py): the seeded split of the
    # file's records (split -> fraction; empty: the whole file is the split) and the masking protocol
    split_fractions: dict[str, float] = dataclasses.field(default_factory=dict)
    masking: dict[str, Any] = dataclasses.field(default_factory=dict)
    # image datasets (loaders cifar / tiny_imagenet / image_folder / mnist_csv / sklearn_digits;
    # pipeline/extraction/image_data.py): sha256 of each split's data files (null: not pinned yet) and the
    # image options (label field, archive checksum, default preprocessing)
    data_sha256: dict[str, str | None] = dataclasses.field(default_factory=dict)
    image: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ExtractSpec:
    top_k: int = 64
    context_length: int | None = None   # default min(model max, 2048)
    stride: int | None = None           # default = context_length (disjoint windows)
    logprob_dtype: str = "float16"
    entropy: bool = True
    store_vocab: bool = True            # the vocabulary strings (table `vocab`), so notebooks show text
    store_embedding: bool = False       # the input embedding matrix (table `embedding`, float32)
    head_memory_mb: float = 512.0       # budget of the (P, V) float32 work tensors
    head_chunk: int | None = None       # positions per LM-head chunk; None: 128 on CPU (cache-friendly), budget on CUDA
    chunk_size: int = 65536             # store chunk (positions)
    tf32: bool = False
    deterministic: bool = True
    progress: bool = True
    max_positions: int | None = None    # score only the windows covering the first N positions
    loss_cap: float | None = None       # masked models: report PPL = inf when the mean NLL exceeds it (the
                                        # paper's C.2 cap of 70); metrics only, never the stored arrays
    num_shards: int = 1                 # write one store in S shards of whole chunks (run shard=0..S-1, then finalize)
    shard: int = 0                      # which shard this run writes
    lock: str = "auto"                  # single writer: flock | lease | auto (lease under SLURM, else flock)
    word_arrays: str | bool = "auto"    # bow_logmass + word_start (DESIGN section 7): auto | true | false

    def __post_init__(self):
        if self.top_k < 1:
            raise ConfigError(f"extract.top_k={self.top_k} must be >= 1")
        mode = {"true": True, "false": False}.get(str(self.word_arrays).lower(), self.word_arrays)
        if mode not in ("auto", True, False):
            raise ConfigError(f"extract.word_arrays={self.word_arrays!r}: use auto, true or false")
        object.__setattr__(self, "word_arrays", mode)
        if self.logprob_dtype not in ("float16", "float32"):
            raise ConfigError(f"extract.logprob_dtype={self.logprob_dtype!r}: use float16 or float32")
        if self.num_shards < 1 or not 0 <= self.shard < self.num_shards:
            raise ConfigError(f"extract.shard={self.shard} of extract.num_shards={self.num_shards}: need "
                              "num_shards >= 1 and 0 <= shard < num_shards")
        if self.lock not in ("auto", "flock", "lease"):
            raise ConfigError(f"extract.lock={self.lock!r}: use auto, flock or lease")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    model: ModelSpec
    dataset: DatasetSpec
    extract: ExtractSpec
    store: str | None
    stores_root: str
    overwrite: bool
    resolved: dict[str, Any]            # the fully resolved config, recorded in the store
    skip_existing: bool = False         # reuse a complete store of the same setting (multirun sweeps)


def _build(cls, d: dict[str, Any], group: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in config group '{group}'; known: {sorted(names)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"config group '{group}': {e}") from None


MISSING = "???"  # OmegaConf's mark of a required value nobody gave (to_container keeps it as this string)

_HOW = {"model.name_or_path": "a local directory with config.json or a hub id (owner/name)",
        "dataset.path": "the file to score (.txt, .jsonl, .json or .parquet), or the folder of an image dataset"}


def _check_required(cfg: dict[str, Any]) -> None:
    """A value left at '???' is reported as required, before anything reads it as a path or a name."""
    for group in ("model", "dataset", "extract"):
        for key, value in cfg[group].items():
            if value == MISSING:
                name = f"{group}.{key}"
                raise ConfigError(f"{name} is required: pass {name}=<{_HOW.get(name, 'value')}>")
    for key in ("store", "overwrite", "skip_existing"):
        if cfg.get(key) == MISSING:
            raise ConfigError(f"{key} is required: pass {key}=<value>")


def run_spec_from_dict(cfg: dict[str, Any]) -> RunSpec:
    """cfg: the resolved config as a plain dict (OmegaConf.to_container(cfg, resolve=True))."""
    for key in ("model", "dataset", "extract"):
        if not isinstance(cfg.get(key), dict):
            raise ConfigError(f"config group '{key}' is missing: pass {key}=<name> or compose it")
    _check_required(cfg)
    model = dict(cfg["model"])
    if not model.get("name"):
        # a bare model.name_or_path=DIR_OR_ID: name it after its last path component
        model["name"] = str(model.get("name_or_path") or "").rstrip("/").split("/")[-1] or "model"
    ds = dict(cfg["dataset"])
    proto = ds.pop("protocol", None) or {}
    ds.update({k: proto[k] for k in ("scoring", "separator", "bos") if k in proto})
    return RunSpec(
        model=_build(ModelSpec, model, "model"),
        dataset=_build(DatasetSpec, ds, "dataset"),
        extract=_build(ExtractSpec, cfg["extract"], "extract"),
        store=cfg.get("store"),
        stores_root=str((cfg.get("paths") or {}).get("stores", "stores")),
        overwrite=bool(cfg.get("overwrite", False)),
        resolved=cfg,
        skip_existing=bool(cfg.get("skip_existing", False)),
    )
