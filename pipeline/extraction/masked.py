"""Masked-model stores (DESIGN section 8; the paper's appendix C.2): one position per masked residue.

    python -m pipeline.extract model=esm2-8m dataset=uniref50 dataset.path=test_00.csv
    python -m pipeline.extract model.name_or_path=DIR dataset=fasta dataset.path=FILE store=OUT.zarr

Each sequence (read, split, cleaned and masked as `sequences.py` documents) is scored in windows of at most
W = L - 2 residues, L the model's token capacity (ESM-2: 1,026 position embeddings, 1,024 tokens with <cls>
and <eos>, so 1,022 residues). In a window every masked residue is replaced by the mask token and all are
predicted in one forward pass; a position's row is (doc_id = the record's index in the file, token_index =
the residue's index in the sequence, target = the residue's id). The masks are a function of the sequence,
its doc_id and the seed, never of the model, so every model of a run scores the same positions and
`token_index` (in the stream hash) makes stores with other masks unpairable.

The LM head runs in float32 on the masked rows only (a float32 copy of the model's MLM head when the model
runs in bf16/fp16; checked once against the model's own logits, else its logits are used and the path is
recorded); the per-position arrays come from `head.score_logits` (float64 reductions), as for text.

Windows are a fixed list in stream order and batches (model.batch_size windows) are drawn from it in order,
so a killed run restarted with the same config resumes from the batch holding the store's resume point and
ends bit-identical. Metrics: PPL = exp(mean NLL over the masked residues), ACC (strictly top-1); with
`extract.loss_cap` (the paper's 70) the reported `ppl_capped` is inf when the mean NLL exceeds the cap.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..store import StoreWriter, open_store, store_path
from ..store.lock import WriterLock
from ..store.paths import _slug
from .config import ModelSpec, RunSpec
from .errors import (
    ConfigError,
    ContextTooLongError,
    DatasetNotFoundError,
    EmptyDatasetError,
    ModelNotFoundError,
)
from .head import score_logits_chunked
from .models import (
    _looks_local,
    config_json_on_disk,
    count_params,
    model_fingerprint,
    model_source,
    resolve_device,
    resolve_dtype,
    vocab_hash,
)
from .sequences import (
    MASK_RULE,
    Encoded,
    Masking,
    encode,
    load_sequences,
    mask_positions,
    resolve_path,
    window_bounds,
)

log = logging.getLogger(__name__)

# Models whose position ids start at padding_idx + 1 (fairseq convention): two positions fewer than the table.
_PADDING_OFFSET_TYPES = ("esm", "roberta", "xlm-roberta", "camembert")


@dataclasses.dataclass
class MaskedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    head: torch.nn.Module | None          # float32 MLM head applied to final hidden states; None: model logits
    n_classes: int
    max_length: int                       # token capacity, special tokens included
    info: dict                            # the store's `model` section
    tokenizer_info: dict

    @torch.no_grad()
    def scored_logits(self, ids: torch.Tensor, mask: torch.Tensor | None, rows: np.ndarray) -> torch.Tensor:
        """float32 logits (P, V) of the rows (batch row, token position)."""
        r0, r1 = torch.from_numpy(rows[:, 0]).to(self.device), torch.from_numpy(rows[:, 1]).to(self.device)
        if self.head is not None:
            h = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[r0, r1]
            return self.head(h.to(torch.float32))
        return self.model(input_ids=ids, attention_mask=mask).logits[r0, r1].to(torch.float32)


def token_capacity(config: dict, override: int | None) -> int | None:
    """Tokens one forward may hold, special tokens included: model.max_length, else max_position_embeddings
    (less the padding offset of fairseq-style position ids: ESM-2's 1,026 hold 1,024 tokens)."""
    if override:
        return int(override)
    n = config.get("max_position_embeddings")
    if not isinstance(n, int) or n <= 0:
        return None
    if config.get("model_type") in _PADDING_OFFSET_TYPES:
        n -= int(config.get("pad_token_id") or 0) + 1
    return n


def load_masked_model(spec: ModelSpec) -> MaskedModel:
    """A Hugging Face masked LM (hub id or save_pretrained directory) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    if spec.gguf_file or spec.quantization:
        raise ConfigError(f"model {spec.name!r}: model.gguf_file / model.quantization are for causal LMs; masked "
                          "models load in float32 / bfloat16 / float16 (model.dtype)")
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    src = model_source(spec.name_or_path)
    local = Path(src).expanduser()
    if _looks_local(src) and not local.exists():
        raise ModelNotFoundError(f"model.name_or_path={spec.name_or_path!r}: no such directory; give a directory "
                                 "with config.json (save_pretrained), or a hub id such as facebook/esm2_t6_8M_UR50D")
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(src, **common)
        tokenizer = AutoTokenizer.from_pretrained(src, **common)
        kwargs = {"dtype": dtype}
        if spec.attn_implementation:
            kwargs["attn_implementation"] = spec.attn_implementation
        model = AutoModelForMaskedLM.from_pretrained(src, config=config, **common, **kwargs)
    except OSError as e:
        raise ModelNotFoundError(f"could not load masked LM {spec.name_or_path!r} (revision {spec.revision}): {e}. "
                                 "Offline? Download it and pass model.name_or_path=<directory>") from None
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise ConfigError(f"model {spec.name_or_path!r} ({type(config).__name__}) is not a masked LM: datasets "
                              "fasta / uniref50 / proteins_demo need AutoModelForMaskedLM models (ESM-2)") from None
        raise
    if getattr(config, "is_decoder", False):
        raise ConfigError(f"model {spec.name_or_path!r} has is_decoder=true (causal attention): not a masked LM")
    if tokenizer.mask_token_id is None:
        raise ConfigError(f"tokenizer of {spec.name_or_path!r} has no mask token: not a masked-LM tokenizer")
    model.to(device).eval()
    capacity = token_capacity(config.to_dict(), spec.max_length)
    if capacity is None:
        raise ConfigError(f"model {spec.name_or_path!r} has no max_position_embeddings: pass model.max_length=<tokens>")
    total, nonembed = count_params(model)
    n_classes = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None \
        else int(config.vocab_size)
    info = {
        "name": spec.name, "name_or_path": spec.name_or_path, "revision": spec.revision,
        "resolved_revision": getattr(config, "_commit_hash", None), "gguf_file": None,
        "dtype": str(dtype).replace("torch.", ""), "quantization": None,
        "n_params": total, "n_params_nonembed": nonembed, "n_params_note": "counted on the loaded model",
        "architecture": type(model).__name__, "model_type": config.model_type,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "kernel_path": f"{type(model).__name__}: attention={getattr(model.config, '_attn_implementation', None)}",
        "position_embedding_type": getattr(config, "position_embedding_type", None),
        "token_dropout": getattr(config, "token_dropout", None),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "token_capacity": capacity, "device": str(device), "n_classes": n_classes,
        "trust_remote_code": spec.trust_remote_code, "fingerprint": model_fingerprint(src, config, {}),
    }
    tok_info = {"name": getattr(tokenizer, "name_or_path", spec.name_or_path), "class": type(tokenizer).__name__,
                "vocab_size": len(tokenizer), "vocab_hash": vocab_hash(tokenizer),
                "mask_token_id": tokenizer.mask_token_id, "unk_token_id": tokenizer.unk_token_id,
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    lm = MaskedModel(model, tokenizer, device, _float32_head(model), n_classes, capacity, info, tok_info)
    if lm.head is not None and not _head_matches(lm):
        log.warning("%s: the MLM head copy does not reproduce the model's logits; using the model's logits", spec.name)
        lm.head = None
    lm.info["head_path"] = "float32 MLM head on final hidden states" if lm.head is not None else "model_logits"
    return lm


def _float32_head(model) -> torch.nn.Module | None:
    """The model's MLM head (ESM/RoBERTa `lm_head`, BERT `cls`) in float32 (a copy when the model is not)."""
    head = getattr(model, "lm_head", None)
    if head is None:
        head = getattr(model, "cls", None)
    if not isinstance(head, torch.nn.Module):
        return None
    if next(head.parameters()).dtype == torch.float32:
        return head
    return copy.deepcopy(head).to(torch.float32).eval()


@torch.no_grad()
def _head_matches(lm: MaskedModel, n: int = 12) -> bool:
    ids = (torch.arange(n, device=lm.device) * 5 + 4) % min(lm.n_classes, len(lm.tokenizer))
    ids = ids.view(1, -1)
    ref = lm.model(input_ids=ids).logits[0].float()
    rows = np.stack([np.zeros(n, np.int64), np.arange(n)], 1)
    mine = lm.scored_logits(ids, None, rows)
    tol = 1e-4 if lm.model.dtype == torch.float32 else 5e-2
    return bool(torch.allclose(mine, ref, rtol=tol, atol=tol * (1 + ref.abs().max().item())))


# ---------------------------------------------------------------- the plan: windows and positions


@dataclasses.dataclass
class Plan:
    """Windows in stream order (sequence, residue range) and the positions they score, in the same order."""
    seq: np.ndarray          # (n_windows,) index into Encoded
    lo: np.ndarray
    hi: np.ndarray
    offset: np.ndarray       # (n_windows + 1,) first position of each window
    doc_id: np.ndarray       # (N,) int32
    token_index: np.ndarray  # (N,) int32 residue index in the sequence
    targets: np.ndarray      # (N,) int32 residue id
    stats: dict

    @property
    def n_positions(self) -> int:
        return int(self.offset[-1])

    def __len__(self) -> int:
        return len(self.seq)


def build_plan(enc: Encoded, masking: Masking, max_residues: int) -> Plan:
    seq, lo, hi, counts = [], [], [], []
    doc_id, token_index, targets = [], [], []
    n_long = n_windows_long = n_dropped = n_masked_total = 0
    for j, (ids, s, doc) in enumerate(zip(enc.ids, enc.sequences, enc.doc_ids)):
        n = len(ids)
        bounds = window_bounds(n, max_residues, masking.long_sequences)
        if n > max_residues:
            n_long += 1
            n_windows_long += len(bounds)
            n_dropped += n - bounds[-1][1]
        scored = s[: bounds[-1][1]] if masking.long_sequences == "truncate" else s
        masked = mask_positions(scored, doc, masking.seed, masking.fraction)
        n_masked_total += len(masked)
        for a, b in bounds:
            m = masked[(masked >= a) & (masked < b)]
            if not len(m):
                continue  # a window of a long sequence without masked residues: nothing to score
            seq.append(j)
            lo.append(a)
            hi.append(b)
            counts.append(len(m))
            doc_id.append(np.full(len(m), doc, np.int32))
            token_index.append(m.astype(np.int32))
            targets.append(ids[m].astype(np.int32))
    cat = (lambda x: np.concatenate(x) if x else np.zeros(0, np.int32))  # noqa: E731
    stats = {"n_long_sequences": n_long, "n_windows_of_long_sequences": n_windows_long,
             "n_residues_not_scored": n_dropped, "n_masked": n_masked_total,
             "n_residues": int(sum(len(x) for x in enc.ids))}
    return Plan(np.asarray(seq, np.int64), np.asarray(lo, np.int64), np.asarray(hi, np.int64),
                np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]), cat(doc_id), cat(token_index),
                cat(targets), stats)


def cap_plan(plan: Plan, max_positions: int | None) -> Plan:
    """Only the windows covering the first max_positions positions (smoke runs)."""
    if not max_positions or max_positions >= plan.n_positions:
        return plan
    keep = int(np.searchsorted(plan.offset[1:], max_positions, side="left")) + 1
    n = int(plan.offset[keep])
    return dataclasses.replace(plan, seq=plan.seq[:keep], lo=plan.lo[:keep], hi=plan.hi[:keep],
                               offset=plan.offset[:keep + 1], doc_id=plan.doc_id[:n],
                               token_index=plan.token_index[:n], targets=plan.targets[:n])


def special_layout(tokenizer) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the residues of one sequence, as the tokenizer adds them (ESM: <cls> .. <eos>)."""
    sentinel = -7
    out = list(tokenizer.build_inputs_with_special_tokens([sentinel]))
    i = out.index(sentinel)
    return out[:i], out[i + 1:]


class _Batches:
    """Inputs of a batch of windows: residues with the masked ones replaced by the mask token, special tokens
    around them, right padding; and the (batch row, token position) of each scored residue, in plan order."""

    def __init__(self, plan: Plan, enc: Encoded, batch_size: int, prefix: list[int], suffix: list[int],
                 mask_id: int, pad_id: int):
        self.p, self.e, self.B = plan, enc, batch_size
        self.prefix, self.suffix, self.mask_id, self.pad = prefix, suffix, mask_id, pad_id
        self.n = math.ceil(len(plan) / batch_size)

    def bounds(self, b: int) -> tuple[int, int]:
        return b * self.B, min((b + 1) * self.B, len(self.p))

    def first_containing(self, position: int) -> int:
        ends = self.p.offset[np.minimum(np.arange(1, self.n + 1) * self.B, len(self.p))]
        return int(np.searchsorted(ends, position, side="right"))

    def inputs(self, b: int, device):
        lo, hi = self.bounds(b)
        p, P = self.p, len(self.prefix)
        seqs, rows = [], []
        for r, w in enumerate(range(lo, hi)):
            a, z = int(p.lo[w]), int(p.hi[w])
            x = self.e.ids[p.seq[w]][a:z].copy()
            m = p.token_index[p.offset[w]:p.offset[w + 1]].astype(np.int64) - a
            x[m] = self.mask_id
            seqs.append(np.concatenate([self.prefix, x, self.suffix]).astype(np.int64))
            rows.append(np.stack([np.full(len(m), r), m + P], 1))
        T = max(len(x) for x in seqs)
        ids = np.full((len(seqs), T), self.pad, np.int64)
        attn = np.zeros((len(seqs), T), np.int64)
        for r, x in enumerate(seqs):
            ids[r, :len(x)] = x
            attn[r, :len(x)] = 1
        mask = torch.from_numpy(attn).to(device) if (attn == 0).any() else None
        return torch.from_numpy(ids).to(device), mask, np.concatenate(rows)


# ---------------------------------------------------------------- provenance, paths, metrics


def resolve_length(spec: RunSpec, capacity: int | None) -> int:
    """L: extract.context_length (at most the model's capacity), default the capacity."""
    L = spec.extract.context_length or capacity
    if L is None:
        raise ConfigError(f"model {spec.model.name!r}: its token capacity is unknown; pass model.max_length=<tokens>")
    if capacity is not None and L > capacity:
        raise ContextTooLongError(f"extract.context_length={L} exceeds the {capacity} tokens model "
                                  f"{spec.model.name!r} holds (special tokens included); use at most {capacity}")
    return int(L)


def setting_tag_masked(masking: Masking, L: int, K: int, logprob_dtype: str, model_dtype: str) -> str:
    """e.g. 'masked-f0.15-seed0-split-L1024-K33-lp16-float32' (+ '-unk' when out-of-alphabet residues are read)."""
    lp = {"float16": "lp16", "float32": "lp32"}[logprob_dtype]
    tag = f"masked-f{masking.fraction:g}-seed{masking.seed}-{masking.long_sequences}-L{L}-K{K}-{lp}-{model_dtype}"
    if masking.unknown != "skip":
        tag += f"-{masking.unknown}"
    if not (masking.uppercase and masking.strip_terminal_stop):
        tag += f"-case{int(masking.uppercase)}stop{int(masking.strip_terminal_stop)}"
    return _slug(tag)


def default_masked_store(spec: RunSpec, masking: Masking, L: int, K: int, model_dtype: str) -> Path:
    return store_path(spec.stores_root, spec.dataset.name, spec.dataset.split, spec.model.name,
                      setting_tag_masked(masking, L, K, spec.extract.logprob_dtype, model_dtype))


def early_masked_store(spec: RunSpec, masking: Masking) -> Path | None:
    """The store path before the model loads (store=, or from config.json); None when that is not on disk."""
    if spec.store:
        return Path(spec.store)
    cfg = config_json_on_disk(spec.model.name_or_path, spec.model.revision)
    if cfg is None or not isinstance(cfg.get("vocab_size"), int):
        return None
    L = resolve_length(spec, token_capacity(cfg, spec.model.max_length))
    dtype = str(resolve_dtype(spec.model.dtype, resolve_device(spec.model.device))).replace("torch.", "")
    return default_masked_store(spec, masking, L, min(spec.extract.top_k, cfg["vocab_size"]), dtype)


def _skip_report(enc: Encoded) -> str:
    parts = [f"{reason}: {n}" for reason, n in sorted(enc.skipped.items())]
    if enc.unknown_letters:
        shown = ", ".join(f"{ch!r} x{n}" for ch, n in sorted(enc.unknown_letters.items(), key=lambda kv: -kv[1])[:10])
        parts.append(f"letters outside the alphabet: {shown}")
    if enc.n_unknown_mapped:
        parts.append(f"{enc.n_unknown_mapped} residues read as <unk>")
    return "; ".join(parts) or "none"


def masked_provenance(spec: RunSpec, lm: MaskedModel, masking: Masking, seqs_meta: dict, enc: Encoded, plan: Plan,
                      L: int, K: int, n_special: int) -> dict:
    from .run import _git, _versions

    n_skipped = sum(enc.skipped.values())
    dataset = {**seqs_meta, "n_sequences": len(enc.ids), "n_skipped": n_skipped, "skipped": dict(enc.skipped),
               "skipped_doc_ids": {k: v[:1000] for k, v in enc.skipped_doc_ids.items()},
               "unknown_letters": dict(enc.unknown_letters), "n_unknown_residues_as_unk": enc.n_unknown_mapped,
               "n_residues": plan.stats["n_residues"], "n_documents": len(enc.ids)}
    return {
        "model": lm.info,
        "tokenizer": lm.tokenizer_info,
        "dataset": dataset,
        "protocol": {
            "scoring": "masked", "separator": None, "bos": None,
            "context_length": L, "stride": None, "special_tokens_per_window": n_special,
            "max_residues_per_window": L - n_special,
            "masking": {"fraction": masking.fraction, "seed": masking.seed, "rule": MASK_RULE,
                        "mask_token_id": lm.tokenizer.mask_token_id, "one_forward_pass": True,
                        "never_special_tokens": True, "n_masked": plan.stats["n_masked"],
                        "n_scored": plan.n_positions},
            "residues": {"uppercase": masking.uppercase, "strip_terminal_stop": masking.strip_terminal_stop,
                         "unknown": masking.unknown},
            "long_sequences": {"policy": masking.long_sequences, "max_residues": L - n_special,
                               "n_affected": plan.stats["n_long_sequences"],
                               "n_windows": plan.stats["n_windows_of_long_sequences"],
                               "n_residues_not_scored": plan.stats["n_residues_not_scored"]},
            "top_k": K, "top_k_requested": spec.extract.top_k, "logprob_dtype": spec.extract.logprob_dtype,
            "entropy": spec.extract.entropy, "batch_size": spec.model.batch_size,
            "max_positions": spec.extract.max_positions,
        },
        "runtime": {"tf32": spec.extract.tf32, "deterministic": spec.extract.deterministic,
                    "torch_threads": torch.get_num_threads(), "versions": _versions(), **_git()},
        "config": spec.resolved,
    }


def masked_metrics(tlp: np.ndarray, correct: np.ndarray, loss_cap: float | None) -> dict:
    """PPL = exp(mean NLL over the masked residues), float64 sums over fixed blocks; ACC strict top-1."""
    from .run import _metrics

    zeros = np.zeros(len(tlp), np.int32)
    m = {k: v for k, v in _metrics(tlp, correct, zeros, zeros).items()
         if k in ("n_positions", "nll_sum_nats", "nll_mean", "ppl", "acc")}
    if loss_cap is not None:
        over = bool(m["nll_mean"] > loss_cap)
        m["ppl_capped"] = math.inf if over else m["ppl"]
        m["loss_cap"] = {"cap": float(loss_cap), "rule": "ppl_capped = inf if mean NLL > cap else exp(mean NLL)",
                         "exceeded": over, "n_positions_nll_over_cap": int((-tlp.astype(np.float64) > loss_cap).sum())}
    return m


# ---------------------------------------------------------------- the run


def preflight_masked(spec: RunSpec) -> None:
    """Settings checked before anything slow loads."""
    from .run import preflight

    if spec.extract.stride is not None:
        raise ConfigError("extract.stride does not apply to masked models (each sequence is scored in windows of "
                          "the model's capacity, see dataset.masking.long_sequences); leave it null")
    ds = spec.dataset
    if not ds.path and not ds.hub_id:
        raise ConfigError(f"dataset {ds.name!r} needs dataset.path=<FASTA or CSV file>")
    path = resolve_path(ds.path) if ds.path else None
    if path is not None and not path.is_file() and not (ds.files and path.is_dir()):
        raise DatasetNotFoundError(f"dataset.path={ds.path} ({path}) is not a file: check the path")
    preflight(dataclasses.replace(spec, dataset=dataclasses.replace(ds, path=None)))  # the model's path


def extract_masked(spec: RunSpec, lm: MaskedModel | None = None):
    """Run one masked-model extraction to a complete store (kind "masked"); returns the opened Store."""
    from .run import _take

    masking = Masking.from_dict(spec.dataset.masking)
    if lm is None:
        preflight_masked(spec)
    early = early_masked_store(spec, masking) if lm is None else None
    lock = _take(early, spec) if early is not None else None
    try:
        return _extract(spec, masking, lm, lock)
    finally:
        if lock is not None:
            lock.release()


def _extract(spec: RunSpec, masking: Masking, lm: MaskedModel | None, lock: WriterLock | None):
    from .run import _take, configure_torch

    seqs = load_sequences(spec.dataset, masking)  # before the model: a bad file fails in seconds
    configure_torch(spec)
    lm = lm or load_masked_model(spec.model)
    L = resolve_length(spec, lm.max_length)
    K = min(spec.extract.top_k, lm.n_classes)
    path = Path(spec.store) if spec.store else default_masked_store(spec, masking, L, K, lm.info["dtype"])
    if lock is not None and lock.lock_file.parent != path:
        log.info("the store path is %s, not %s as predicted from config.json; locking it now", path,
                 lock.lock_file.parent)
        lock.release()
        lock = None
    if lock is None:
        lock = _take(path, spec)
    try:
        return _write(spec, masking, lm, seqs, L, K, path, lock)
    finally:
        lock.release()


def _write(spec: RunSpec, masking: Masking, lm: MaskedModel, seqs, L: int, K: int, path: Path, lock: WriterLock):
    from .run import _complete_store, setting_hash, write_tables

    prefix, suffix = special_layout(lm.tokenizer)
    W = L - len(prefix) - len(suffix)
    if W < 1:
        raise ContextTooLongError(f"extract.context_length={L} leaves no room for residues beside "
                                  f"{len(prefix) + len(suffix)} special tokens")
    enc = encode(seqs, lm.tokenizer, masking)
    where = f"dataset {spec.dataset.name!r}/{spec.dataset.split} ({seqs.meta['source']})"
    if enc.skipped or enc.n_unknown_mapped:
        log.warning("%s: %d of %d sequences skipped, %s (dataset.masking.unknown=%s)", where,
                    sum(enc.skipped.values()), len(seqs.sequences), _skip_report(enc), masking.unknown)
    if not enc.ids:
        raise EmptyDatasetError(f"{where}: no sequence left to score ({_skip_report(enc)}); check the file, or pass "
                                "dataset.masking.unknown=unk to read out-of-alphabet residues as <unk>")
    plan = cap_plan(build_plan(enc, masking, W), spec.extract.max_positions)
    N = plan.n_positions
    if plan.stats["n_long_sequences"]:
        log.info("%s: %d sequences longer than %d residues (%s)", where, plan.stats["n_long_sequences"], W,
                 "split into windows" if masking.long_sequences == "split"
                 else f"truncated, {plan.stats['n_residues_not_scored']} residues not scored")
    if K < spec.extract.top_k:
        log.info("top_k=%d clamped to the model's %d classes", spec.extract.top_k, lm.n_classes)
    attrs = masked_provenance(spec, lm, masking, seqs.meta, enc, plan, L, K, len(prefix) + len(suffix))
    if spec.skip_existing and not spec.overwrite:
        done = _complete_store(path, setting_hash(attrs))
        if done is not None:
            return done
    lp_dtype = np.dtype(spec.extract.logprob_dtype)
    chunk = spec.extract.head_chunk or 4096
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    batches = _Batches(plan, enc, spec.model.batch_size, prefix, suffix, lm.tokenizer.mask_token_id, pad)
    log.info("extracting %s on %s/%s: %d sequences, %d masked residues in %d windows, L=%d K=%d -> %s",
             spec.model.name, spec.dataset.name, spec.dataset.split, len(enc.ids), N, len(plan), L, K, path)
    optional = ("entropy",) if spec.extract.entropy else ()
    writer = StoreWriter(path, n_positions=N, top_k=spec.extract.top_k, n_classes=lm.n_classes,
                         logprob_dtype=spec.extract.logprob_dtype, attrs=attrs, setting_hash=setting_hash(attrs),
                         chunk_size=spec.extract.chunk_size, overwrite=spec.overwrite, optional=optional,
                         lock=lock, kind="masked")
    with writer:
        write_tables(writer, lm, spec.extract)
        b0 = batches.first_containing(writer.n_done)
        start = int(plan.offset[batches.bounds(b0)[0]]) if b0 < batches.n else N
        keep: dict[str, list] = {"target_logprob": [], "target_rank": [], "target_ties": []}
        if start > 0:  # resumed: the prefix's metrics come from the store
            prev = open_store(path, allow_partial=True).read(list(keep), 0, start)
            for k in keep:
                keep[k].append(prev[k])
        t0 = time.perf_counter()
        bar = tqdm(total=N, initial=start, unit="res", unit_scale=True, disable=not spec.extract.progress,
                   desc=f"{spec.model.name}/{spec.dataset.name}", smoothing=0.05)
        for b in range(b0, batches.n):
            lo, hi = batches.bounds(b)
            p0, p1 = int(plan.offset[lo]), int(plan.offset[hi])
            ids, mask, rows = batches.inputs(b, lm.device)
            tgt = torch.from_numpy(plan.targets[p0:p1].astype(np.int64)).to(lm.device)
            logits = lm.scored_logits(ids, mask, rows)
            out = score_logits_chunked(logits, tgt, K, spec.extract.entropy, chunk,
                                       f"(batch {b}, positions {p0}..{p1})")
            out["topk_logprobs"] = out["topk_logprobs"].astype(lp_dtype)
            writer.write(p0, targets=plan.targets[p0:p1], doc_id=plan.doc_id[p0:p1],
                         token_index=plan.token_index[p0:p1], **out)
            for k in keep:
                keep[k].append(out[k])
            bar.update(p1 - p0)
        bar.close()
        elapsed = time.perf_counter() - t0
        got = {k: np.concatenate(v) for k, v in keep.items()}
        metrics = masked_metrics(got["target_logprob"], (got["target_rank"] == 0) & (got["target_ties"] == 0),
                                 spec.extract.loss_cap)
        metrics.update({"n_sequences": len(enc.ids), "n_skipped": sum(enc.skipped.values()),
                        "elapsed_s_this_run": elapsed,
                        "residues_per_s_this_run": (N - start) / elapsed if elapsed else None, "resumed_from": start})
        store = writer.close(extra_attrs={"metrics": metrics})
    capped = f"  PPL(capped at NLL {spec.extract.loss_cap:g}) {metrics['ppl_capped']:.4f}" \
        if spec.extract.loss_cap is not None else ""
    log.info("%s on %s/%s: PPL %.4f%s  ACC %.4f  (%d masked residues of %d sequences, %d skipped; %.1f res/s) -> %s",
             spec.model.name, spec.dataset.name, spec.dataset.split, metrics["ppl"], capped, metrics["acc"], N,
             len(enc.ids), metrics["n_skipped"], metrics["residues_per_s_this_run"] or 0.0, path)
    return store
