"""The extraction loop: dataset -> token stream -> windows -> batches -> model -> store.

Batches are drawn from the fixed window partition in a fixed order, so a killed run restarted with
the same config restarts from the batch holding the store's resume point (writer.n_done) and
produces bit-identical arrays (the writer drops rows it already holds).

Task datasets (LAMBADA's last word, CBT, ARC; `tasks.py`) run through the same loop: their stream has one
segment per (item, option), the store gets `item_id` / `option_id`, the task tables and a `task` attribute,
and its `metrics` are the task's (pipeline.store.tasks.task_metrics), the token-level ones under `token_metrics`.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..store import (
    StoreError,
    StoreExistsError,
    StoreWriter,
    config_hash,
    open_store,
    setting_tag,
    store_path,
)
from ..store.lock import Lease, WriterLock, job_identity, lease_file
from ..store.shards import finalize_if_ready, position_metrics
from ..store.tasks import check_tables, task_metrics
from ..store.writer import store_kind
from .config import RunSpec
from .datasets import Documents, load_documents
from .errors import (
    ConfigError,
    ContextTooLongError,
    DatasetNotFoundError,
    EmptyDatasetError,
    ModelNotFoundError,
)
from .head import head_chunk_size, score_hidden, score_logits_chunked
from .models import LoadedModel, config_json_on_disk, load_model, model_source, resolve_device, resolve_dtype
from .models import _looks_local as looks_local
from .models import _max_length as max_length_of
from .placement import on_own_gpu
from .stream import Protocol, TokenStream, Windows, build_stream
from .tasks import TaskData, TaskStream, build_task_stream, is_task, load_task, task_protocol
from .words import plan_word_arrays

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 2048
METRIC_BLOCK = 4096  # float64 sums over fixed blocks, in order (DESIGN section 3)


def resolve_protocol(spec: RunSpec, max_length: int | None) -> Protocol:
    ex, ds = spec.extract, spec.dataset
    L = ex.context_length or min(max_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    if max_length is not None and L > max_length:
        raise ContextTooLongError(
            f"extract.context_length={L} exceeds the {max_length} positions model {spec.model.name!r} "
            f"supports; use extract.context_length<={max_length} (or model.max_length if you know better)"
        )
    return Protocol(ds.scoring, ds.separator, ds.bos, L, ex.stride or L)


def _git() -> dict:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    return {"git_sha": sha, "git_dirty": dirty}


def _versions() -> dict:
    import tokenizers
    import transformers
    import zarr

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "zarr": zarr.__version__, "numpy": np.__version__}


def configure_torch(spec: RunSpec) -> None:
    """Before the model is loaded: cuBLAS reads its workspace setting when its handle is created."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (ignored on CPU)
    torch.backends.cuda.matmul.allow_tf32 = spec.extract.tf32
    torch.backends.cudnn.allow_tf32 = spec.extract.tf32
    if spec.extract.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def select_windows(w: Windows, max_positions: int | None) -> Windows:
    if not max_positions or max_positions >= w.n_positions:
        return w
    keep = int(np.searchsorted(w.offset[1:], max_positions, side="left")) + 1
    return Windows(w.seg[:keep], w.a[:keep], w.c[:keep], w.d[:keep], w.n_targets[:keep], w.offset[:keep + 1])


def provenance(spec: RunSpec, lm: LoadedModel, docs: Documents | TaskData, stream: TokenStream, K: int) -> dict:
    p = stream.protocol
    return {
        "model": lm.info,
        "tokenizer": lm.tokenizer_info,
        "dataset": {k: v for k, v in docs.meta.items()},
        "protocol": {"scoring": p.scoring, "separator": p.separator, "bos": p.bos,
                     "bos_token_id": lm.bos_id if p.bos == "document" else None,
                     "context_length": p.context_length, "stride": p.stride,
                     "exact_char_alignment": stream.exact_alignment, "n_text_chars": stream.n_text_chars,
                     "top_k": K, "top_k_requested": spec.extract.top_k,
                     "logprob_dtype": spec.extract.logprob_dtype, "entropy": spec.extract.entropy,
                     "batch_size": spec.model.batch_size, "max_positions": spec.extract.max_positions},
        "runtime": {"tf32": spec.extract.tf32, "deterministic": spec.extract.deterministic,
                    "torch_threads": torch.get_num_threads(), "versions": _versions(), **_git()},
        "config": spec.resolved,
    }


def setting_hash(attrs: dict) -> str:
    """Everything that determines the arrays (not the run's time, git state or output path), the model's
    weights and tokenizer included (`fingerprint`), so a partial store of other weights is never resumed."""
    m = attrs["model"]
    keyed = {"model": {k: m.get(k) for k in ("name_or_path", "revision", "gguf_file", "gguf_sha256", "dtype",
                                             "quantization", "device", "head_path", "n_classes", "fingerprint")},
             "tokenizer": attrs["tokenizer"]["vocab_hash"],
             "dataset": {k: attrs["dataset"].get(k) for k in ("text_sha256", "split", "name")},
             "protocol": attrs["protocol"]}
    if "task" in attrs:  # task stores only, so the hashes of LM stores (resume, skip_existing) are unchanged
        keyed["task"] = {k: attrs["task"][k] for k in ("name", "kind", "protocol")}
    if (attrs["tokenizer"].get("word_arrays") or {}).get("written"):  # likewise: only stores with the word arrays
        keyed["word_arrays"] = attrs["tokenizer"]["space_initial_hash"]
    return config_hash(keyed)


def default_store(spec: RunSpec, model_dtype: str, p: Protocol, K: int) -> Path:
    tag = setting_tag(p.context_length, p.stride, K, spec.extract.logprob_dtype, model_dtype,
                      spec.model.quantization, p.scoring)
    if is_task(spec.dataset):  # e.g. '-gpt2' / '-wholequery' for CBT: two protocols never share a path
        tag += "-" + task_protocol(spec.dataset).replace("_", "")
    if p.bos == "none":
        tag += "-nobos"
    return store_path(spec.stores_root, spec.dataset.name, spec.dataset.split, spec.model.name, tag)


class _Batches:
    """Gathers the inputs of a batch of windows and the rows of their scored targets."""

    def __init__(self, stream: TokenStream, windows: Windows, batch_size: int, pad_id: int):
        self.s, self.w, self.B, self.pad = stream, windows, batch_size, pad_id
        self.n = math.ceil(len(windows) / batch_size)

    def bounds(self, b: int) -> tuple[int, int]:
        return b * self.B, min((b + 1) * self.B, len(self.w))

    def first_containing(self, position: int) -> int:
        """Index of the batch holding `position` (the resume point)."""
        ends = self.w.offset[np.minimum(np.arange(1, self.n + 1) * self.B, len(self.w))]
        return int(np.searchsorted(ends, position, side="right"))

    def inputs(self, b: int, device):
        lo, hi = self.bounds(b)
        seqs, rows = [], []
        for r, i in enumerate(range(lo, hi)):
            seg = self.s.segments[self.w.seg[i]]
            a, c, d = self.w.a[i], self.w.c[i], self.w.d[i]
            seqs.append(seg.seq[a:d - 1])
            j = c + np.flatnonzero(seg.scored[c:d])      # scored target indices in the segment
            rows.append(np.stack([np.full(len(j), r), j - 1 - a], 1))  # (batch row, input position)
        T = max(len(x) for x in seqs)
        ids = np.full((len(seqs), T), self.pad, np.int64)
        mask = np.zeros((len(seqs), T), np.int64)
        for r, x in enumerate(seqs):
            ids[r, :len(x)] = x
            mask[r, :len(x)] = 1
        attn = torch.from_numpy(mask).to(device) if (mask == 0).any() else None
        return torch.from_numpy(ids).to(device), attn, np.concatenate(rows)


def score_batch(lm: LoadedModel, ids, mask, rows: np.ndarray, tgt: torch.Tensor, k: int, entropy: bool,
                chunk: int, where: str = "", bow: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Forward one batch and score the rows (batch row, input position) of its targets (with bow, the
    space-initial mask on the model's device: bow_logmass too)."""
    if lm.head_weight is not None:
        h = lm.hidden(ids, mask)[rows[:, 0], rows[:, 1]]  # only scored rows go through the head
        return score_hidden(h, lm.head_weight, lm.head_bias, tgt, k, entropy, chunk, where, bow)
    z = lm.logits(ids, mask)[rows[:, 0], rows[:, 1]]
    return score_logits_chunked(z, tgt, k, entropy, chunk, where, bow)


def _metrics(tlp: np.ndarray, correct: np.ndarray, n_chars: np.ndarray, n_bytes: np.ndarray) -> dict:
    # one definition for the single writer and for finalising a sharded store (bit-identical metrics)
    return position_metrics(tlp, correct, n_chars, n_bytes)


def preflight(spec: RunSpec) -> None:
    """Settings checked before anything slow loads: the model's source, the dataset's path."""
    m = spec.model
    src = model_source(m.name_or_path)
    local = Path(src).expanduser()
    if m.gguf_file:
        if not (local / m.gguf_file).is_file():
            raise ModelNotFoundError(f"GGUF file {local / m.gguf_file} not found: check model.name_or_path and "
                                     "model.gguf_file")
    elif looks_local(src) and not local.exists():
        raise ModelNotFoundError(f"model.name_or_path={m.name_or_path!r}: no such directory; give an existing "
                                 "directory with config.json, or a hub id (owner/name)")
    elif local.is_dir() and not (local / "config.json").exists():
        raise ModelNotFoundError(f"model directory {local} has no config.json: is it a save_pretrained directory?")
    ds = spec.dataset
    if ds.loader == "text_file" and not ds.path:
        raise ConfigError("dataset.path is required with dataset=text_file: pass dataset.path=<file.txt|.jsonl|.parquet>")
    if ds.path and not Path(ds.path).expanduser().exists():
        raise DatasetNotFoundError(f"dataset.path={ds.path} does not exist: check the path")


def _peek_model(spec: RunSpec) -> tuple[int | None, int] | None:
    """(max_length, vocab_size) from the model's config.json when it is on disk (a local directory, or a hub
    download in the local cache), without loading the model; None when it is not."""
    m = spec.model
    if m.gguf_file:
        return None
    cfg = config_json_on_disk(m.name_or_path, m.revision)
    if cfg is None or not isinstance(cfg.get("vocab_size"), int):
        return None
    return max_length_of(SimpleNamespace(**cfg), m.max_length), cfg["vocab_size"]


def early_store_path(spec: RunSpec) -> Path | None:
    """The store path, known before the model loads: store= itself, or the default path computed from the
    model's config.json (the model's logit width and maximum context come from there). None if that is not
    on disk (a hub model not downloaded yet, a GGUF file): the lock is then taken after the model loads."""
    if spec.store:
        return Path(spec.store)
    peek = _peek_model(spec)
    if peek is None:
        return None
    max_length, vocab = peek
    protocol = resolve_protocol(spec, max_length)
    dtype = str(resolve_dtype(spec.model.dtype, resolve_device(spec.model.device))).replace("torch.", "")
    return default_store(spec, dtype, protocol, min(spec.extract.top_k, vocab))


def _writer_lock(path: Path, spec: RunSpec) -> WriterLock | Lease:
    """A shard's lease; a single writer's flock, or its lease (extract.lock=lease, or auto under SLURM)."""
    ex = spec.extract
    if ex.num_shards > 1:
        return Lease(lease_file(path, f"shard-{ex.shard}"), what=f"{path} shard {ex.shard}")
    if ex.lock == "lease" or (ex.lock == "auto" and job_identity()["job"] is not None):
        return Lease(lease_file(path, "writer"), what=str(path))
    return WriterLock.for_store(path)


def _take(path: Path, spec: RunSpec) -> WriterLock | Lease:
    """Refuse a path that is not a store of this project, lock it, refuse a complete store (unless told)."""
    store_kind(path)
    lock = _writer_lock(path, spec)
    lock.acquire()
    try:
        if not (spec.overwrite or spec.skip_existing):
            _complete_store(path, None)
    except BaseException:
        lock.release()
        raise
    return lock


# Dataset loaders of the other store kinds (DESIGN section 8): image classification and masked sequences.
CLASSIFICATION_LOADERS = ("cifar", "tiny_imagenet", "image_folder", "mnist_csv", "sklearn_digits")
MASKED_LOADERS = ("fasta", "sequence_csv")


@on_own_gpu  # a job of a multi-GPU joblib sweep claims a GPU of its own
def extract(spec: RunSpec, lm: LoadedModel | None = None):
    """Run one extraction to a complete store; returns the opened Store.

    Image datasets go to `images.extract_classification` (kind "classification"), sequence datasets to
    `masked.extract_masked` (kind "masked"); text and task datasets are handled here.

    Everything that can fail fast does so before the data and the model load: the model and dataset paths
    (preflight), the store path (not a store of this project: NotAStoreError; complete: StoreExistsError) and
    its writer lock (another writer: StoreLockedError). The lock is held from then on until the store is done.
    """
    if spec.extract.num_shards > 1 and spec.dataset.loader in CLASSIFICATION_LOADERS + MASKED_LOADERS:
        raise ConfigError(f"extract.num_shards={spec.extract.num_shards}: only text and task datasets are written "
                          f"in shards, not {spec.dataset.loader!r}; use extract.num_shards=1")
    if spec.extract.num_shards > 1 and spec.overwrite:
        raise ConfigError("overwrite=true with extract.num_shards > 1 would delete the other shards' chunks; remove "
                          "the store first (`python -m pipeline.stores rm PATH`), then run the shards")
    if spec.dataset.loader in CLASSIFICATION_LOADERS:
        from .images import extract_classification

        return extract_classification(spec, lm)
    if spec.dataset.loader in MASKED_LOADERS:
        from .masked import extract_masked

        return extract_masked(spec, lm)
    if lm is None:
        preflight(spec)
    early = early_store_path(spec) if lm is None else None
    lock = _take(early, spec) if early is not None else None
    try:
        return _extract(spec, lm, lock)
    finally:
        if lock is not None:
            lock.release()


def _extract(spec: RunSpec, lm: LoadedModel | None, lock: WriterLock | None):
    task = load_task(spec.dataset) if is_task(spec.dataset) else None
    if task is not None and spec.extract.max_positions:
        raise ConfigError(f"extract.max_positions would cut task {spec.dataset.name!r} inside an item; cap whole "
                          "items with dataset.n_documents=N instead")
    docs = task if task is not None else load_documents(spec.dataset)
    configure_torch(spec)
    lm = lm or load_model(spec.model)
    protocol = resolve_protocol(spec, lm.max_length)
    K = min(spec.extract.top_k, lm.n_classes)
    path = Path(spec.store) if spec.store else default_store(spec, lm.info["dtype"], protocol, K)
    if lock is not None and lock.lock_file.parent != path:
        # the model's config.json promised another width or context than the loaded model has
        log.info("the store path is %s, not %s as predicted from config.json; locking it now", path,
                 lock.lock_file.parent)
        lock.release()
        lock = None
    if lock is None:
        lock = _take(path, spec)
    try:
        return _write(spec, lm, task, docs, protocol, K, path, lock)
    finally:
        lock.release()  # idempotent: the caller's release of the early lock is then a no-op


def _write(spec: RunSpec, lm: LoadedModel, task, docs, protocol: Protocol, K: int, path: Path, lock: WriterLock):
    ts: TaskStream | None = None
    if task is not None:
        ts = build_task_stream(task, lm.tokenizer, protocol, lm.bos_id)
        check_tables(ts.tables)
        stream = ts.stream
    else:  # word-level arrays (DESIGN section 7) for text stores whose tokenizer passes the property test
        words_info, bow_mask = plan_word_arrays(spec.extract.word_arrays, lm.tokenizer, lm.n_classes)
        stream = build_stream(docs.texts, lm.tokenizer, protocol, lm.bos_id, word_start=bow_mask is not None)
    windows = select_windows(stream.windows(), spec.extract.max_positions)
    N = windows.n_positions
    if N == 0:
        raise EmptyDatasetError(f"dataset {spec.dataset.name!r}/{spec.dataset.split} gave no scored positions")
    if K < spec.extract.top_k:
        log.info("top_k=%d clamped to the model's %d classes", spec.extract.top_k, lm.n_classes)
    attrs = provenance(spec, lm, docs, stream, K)
    if ts is not None:
        attrs["task"] = ts.attrs
    else:
        attrs["tokenizer"] = {**attrs["tokenizer"], **words_info}
        if bow_mask is None:
            log.info("no word-level arrays (bow_logmass, word_start): %s", words_info["word_arrays"]["reason"])
    if spec.skip_existing and not spec.overwrite:
        done = _complete_store(path, setting_hash(attrs))
        if done is not None:
            return done
    lp_dtype = np.dtype(spec.extract.logprob_dtype)
    chunk = spec.extract.head_chunk or head_chunk_size(lm.n_classes, spec.extract.head_memory_mb, lm.device.type)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    batches = _Batches(stream, windows, spec.model.batch_size, pad)
    log.info("extracting %s on %s/%s: %d positions, %d windows, L=%d S=%d K=%d -> %s", spec.model.name,
             spec.dataset.name, spec.dataset.split, N, len(windows), protocol.context_length, protocol.stride, K, path)

    optional = (("entropy",) if spec.extract.entropy else ()) + (("item_id", "option_id") if ts is not None else ())
    bow = None
    if ts is None and bow_mask is not None:
        optional += ("bow_logmass", "word_start")
        bow = torch.from_numpy(bow_mask).to(lm.device)
    writer = StoreWriter(path, n_positions=N, top_k=spec.extract.top_k, n_classes=lm.n_classes, logprob_dtype=spec.extract.logprob_dtype,
                         attrs=attrs, setting_hash=setting_hash(attrs), chunk_size=spec.extract.chunk_size,
                         overwrite=spec.overwrite, optional=optional, lock=lock,
                         kind="task" if ts is not None else "text",
                         shard=(spec.extract.shard, spec.extract.num_shards))
    with writer:
        write_tables(writer, lm, spec.extract)
        for name, table in (ts.tables if ts is not None else {}).items():
            writer.write_table(name, table)
        b0 = batches.first_containing(writer.n_done)
        start = int(windows.offset[batches.bounds(b0)[0]]) if b0 < batches.n else N
        keep: dict[str, list] = {"target_logprob": [], "target_rank": [], "target_ties": []}
        if start > 0 and not writer.shard:  # resumed: the prefix's metrics come from the store
            prev = open_store(path, allow_partial=True).read(list(keep), 0, start)
            for k in keep:
                keep[k].append(prev[k])
        t0 = time.perf_counter()
        bar = tqdm(total=N, initial=start, unit="tok", unit_scale=True, disable=not spec.extract.progress,
                   desc=f"{spec.model.name}/{spec.dataset.name}", smoothing=0.05)
        for b in range(b0, batches.n):
            lo, hi = batches.bounds(b)
            pos = int(windows.offset[lo])
            if pos >= writer.stop:  # a shard: the rest belongs to the next shards
                break
            meta = stream.position_arrays(windows, lo, hi)
            if len(meta["targets"]) == 0:  # a batch of windows without targets (only BOS tokens)
                continue
            ids, mask, rows = batches.inputs(b, lm.device)
            tgt = torch.from_numpy(meta["targets"].astype(np.int64)).to(lm.device)
            where = f"(batch {b}, positions {pos}..{int(windows.offset[hi])})"
            out = score_batch(lm, ids, mask, rows, tgt, K, spec.extract.entropy, chunk, where, bow)
            out["topk_logprobs"] = out["topk_logprobs"].astype(lp_dtype)
            writer.write(pos, **meta, **out)
            for k in keep:
                keep[k].append(out[k])
            bar.update(len(meta["targets"]))
        bar.close()
        elapsed = time.perf_counter() - t0
        if writer.shard:  # the metrics need every shard's rows: `finalize` computes them from the store
            n_run = writer.stop - max(start, writer.start)
            writer.close(extra_attrs={"host": platform.node(), "job": job_identity()["job"], "elapsed_s": elapsed,
                                      "positions": n_run, "tokens_per_s": n_run / elapsed if elapsed else None,
                                      "resumed_from": start if start > writer.start else None})
            lock.release()  # before finalizing: finalize waits for no shard to hold its lease
            return _shard_done(spec, path, writer)
        allpos = stream.position_arrays(windows, 0, len(windows))
        got = {k: np.concatenate(v) for k, v in keep.items()}
        metrics = _metrics(got["target_logprob"], (got["target_rank"] == 0) & (got["target_ties"] == 0),
                           allpos["n_chars"], allpos["n_bytes"])
        if ts is not None:  # the task's metrics; the token-level ones (over continuation tokens) beside them
            got.update(item_id=allpos["item_id"], option_id=allpos["option_id"])
            metrics = {**task_metrics(ts.attrs["kind"], got, ts.tables), "token_metrics": metrics}
        metrics.update({"elapsed_s_this_run": elapsed, "tokens_per_s_this_run": (N - start) / elapsed if elapsed else None,
                        "resumed_from": start})
        store = writer.close(extra_attrs={"metrics": metrics})
    if ts is not None:
        shown = "  ".join(f"{k} {_fmt(metrics.get(k))}" for k in ("word_ppl", "token_ppl", "acc", "acc_norm", "acc_bytes")
                          if k in metrics)
        log.info("%s on %s/%s (%s, %d items, %d skipped): %s  (%d positions, %.1f tok/s) -> %s", spec.model.name,
                 spec.dataset.name, spec.dataset.split, ts.attrs["protocol"], ts.attrs["n_items"],
                 sum(ts.attrs["skipped"].values()), shown, N, metrics["tokens_per_s_this_run"] or 0.0, path)
        return store
    log.info("%s on %s/%s: PPL %.4f  BPC %s  BPB %s  ACC %.4f  (%d positions, %.1f tok/s) -> %s",
             spec.model.name, spec.dataset.name, spec.dataset.split, metrics["ppl"],
             _fmt(metrics["bpc"]), _fmt(metrics["bpb"]), metrics["acc"], N,
             metrics["tokens_per_s_this_run"] or 0.0, path)
    return store


def _shard_done(spec: RunSpec, path: Path, writer: StoreWriter):
    """After a shard: finalize the store if every shard is done (else it stays partial); the Store either way."""
    i, S = writer.shard
    store = finalize_if_ready(path)
    if store is None:
        log.info("%s on %s/%s: shard %d of %d done (positions %d..%d) -> %s", spec.model.name, spec.dataset.name,
                 spec.dataset.split, i, S, writer.start, writer.stop, path)
        return open_store(path, allow_partial=True)
    m = store.attrs["metrics"]
    log.info("%s on %s/%s: shard %d of %d done; all %d shards finalized: PPL %s  ACC %s -> %s", spec.model.name,
             spec.dataset.name, spec.dataset.split, i, S, S, _fmt(m.get("ppl")), _fmt(m.get("acc")), path)
    return store


def _complete_store(path: Path, reuse_if_hash: str | None):
    """A complete store at `path` is returned if its setting_hash equals `reuse_if_hash` (skip_existing),
    refused with StoreExistsError otherwise; None when there is no complete store there."""
    if not (path / "zarr.json").exists():
        return None
    try:
        store = open_store(path)
    except StoreError:
        return None  # partial (resumable) or not a store: the writer decides
    if reuse_if_hash is not None and store.attrs.get("setting_hash") == reuse_if_hash:
        log.info("%s is already complete with this setting (skip_existing=true): reusing it", path)
        return store
    why = " of another setting (setting_hash differs)" if reuse_if_hash is not None else ""
    raise StoreExistsError(f"{path} is a complete store{why}; pass overwrite=true to replace it, "
                           "skip_existing=true to reuse a store of the same setting, or choose another store=")


def _fmt(x):
    return "n/a" if x is None else f"{x:.4f}"


def write_tables(writer: StoreWriter, lm: LoadedModel, ex) -> None:
    """Optional tables: `vocab` (the string of every id below n_classes; '' past the tokenizer) and
    `embedding` (the input embedding matrix, (n_classes, d) float32) for the similarity-based variant."""
    if ex.store_vocab:
        n_tok = min(len(lm.tokenizer), lm.n_classes)
        strings = lm.tokenizer.batch_decode([[i] for i in range(n_tok)], clean_up_tokenization_spaces=False)
        writer.write_table("vocab", np.array(strings + [""] * (lm.n_classes - n_tok), dtype=object), chunks=65536)
    if ex.store_embedding:
        emb = lm.model.get_input_embeddings()
        if emb is None:
            raise ConfigError(f"extract.store_embedding=true but {lm.info['architecture']} has no input embeddings")
        w = emb.weight.detach().float().cpu().numpy()[: lm.n_classes]
        writer.write_table("embedding", np.ascontiguousarray(w), chunks=8192)
