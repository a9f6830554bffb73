"""Stores with known answers, written through the real writer, for tests and benchmarks.

* ``arrays_from_logprobs``: every position array computed by brute force from full distributions (the
  reference for extraction tests, and the source of small stores whose truth is computable).
* ``random_distributions``: targets and noisy full distributions of several "models" over a small vocabulary,
  optionally with exact ties.
* ``random_task`` / ``write_task_store_from_logprobs`` / ``write_random_task_pair``: task stores (LAMBADA-style
  last word, multiple choice) with their item/option arrays and tables, from full distributions.
* ``write_zipf_pair``: two large aligned stores with realistic, Zipf-shaped top-K log-probs, generated
  block by block without full distributions (benchmarks, storage figures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .hashing import config_hash
from .schema import DEFAULT_CHUNK_SIZE, POSITION_ARRAYS
from .writer import StoreWriter


def arrays_from_logprobs(logprobs: np.ndarray, targets: np.ndarray, k: int, logprob_dtype: str = "float16",
                         *, doc_id=None, n_chars=None, n_bytes=None) -> dict[str, np.ndarray]:
    """Brute-force position arrays from full log-probs (N, V) (float64; -inf allowed for zero probability)."""
    lp = np.asarray(logprobs, dtype=np.float64)
    n, v = lp.shape
    k = min(k, v)
    t = np.asarray(targets, dtype=np.int64)
    rows = np.arange(n)
    lt = lp[rows, t]
    order = np.argsort(-lp, axis=1, kind="stable")[:, :k]  # ties broken by id
    top = np.take_along_axis(lp, order, axis=1)
    rest = lp.copy()
    np.put_along_axis(rest, order, -np.inf, axis=1)
    m = rest.max(axis=1)
    safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        tail = np.where(np.isfinite(m), safe + np.log(np.exp(rest - safe[:, None]).sum(axis=1)), -np.inf)
        p = np.exp(lp)
        ent = -(p * np.where(p > 0, lp, 0.0)).sum(axis=1)  # 0 log 0 = 0
    ones = np.ones(n, np.int32)
    return {
        "targets": t.astype(np.int32),
        "target_logprob": lt.astype(np.float32),
        "target_rank": (lp > lt[:, None]).sum(axis=1).astype(np.int32),
        "target_ties": ((lp == lt[:, None]).sum(axis=1) - 1).astype(np.int32),
        "topk_ids": order.astype(np.int32),
        "topk_logprobs": top.astype(logprob_dtype),
        "tail_logmass": tail.astype(np.float32),
        "entropy": ent.astype(np.float32),
        "n_chars": ones if n_chars is None else np.asarray(n_chars, np.int32),
        "n_bytes": ones if n_bytes is None else np.asarray(n_bytes, np.int32),
        "doc_id": np.zeros(n, np.int32) if doc_id is None else np.asarray(doc_id, np.int32),
    }


def random_distributions(n: int, vocab: int, rng: np.random.Generator, n_models: int = 2,
                         noise=(0.8, 1.6), sharpness: float = 2.0, tie_grid: float | None = None):
    """Targets and full log-probs of ``n_models`` noisy models of one hidden truth.

    truth logits z ~ sharpness * N(0, 1); targets ~ softmax(z); model i sees z + noise[i] * N(0, 1). With
    ``tie_grid``, model logits are rounded to that grid, which makes exact ties (of the target too) common.
    Returns (targets int32 (n,), [log-probs float64 (n, vocab)] * n_models).
    """
    z = sharpness * rng.standard_normal((n, vocab))
    pz = np.exp(z - z.max(axis=1, keepdims=True))
    pz /= pz.sum(axis=1, keepdims=True)
    targets = (pz.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1).astype(np.int32)
    models = []
    for i in range(n_models):
        sd = noise[i] if i < len(noise) else noise[-1]
        logits = z + sd * rng.standard_normal((n, vocab))
        if tie_grid:
            logits = np.round(logits / tie_grid) * tie_grid
        lse = np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)) + logits.max(axis=1)
        models.append(logits - lse[:, None])
    return targets, models


def synthetic_attrs(model: str, *, n_params: int = 1_000_000, dataset: str = "synthetic", split: str = "test",
                    tokenizer: str = "synthetic-vocab", context_length: int = 1024, stride: int = 1024,
                    dtype: str = "float32", text_sha256: str = "0" * 64) -> dict:
    return {
        "model": {"name": model, "n_params": int(n_params), "n_params_nonembed": int(n_params),
                  "architecture": "synthetic", "dtype": dtype, "quantization": None},
        "tokenizer": {"name": tokenizer, "vocab_hash": config_hash(tokenizer)},
        "dataset": {"name": dataset, "split": split, "source": "synthetic", "text_sha256": text_sha256},
        "protocol": {"scoring": "independent", "separator": None, "bos": False,
                     "context_length": int(context_length), "stride": int(stride)},
    }


def write_store_from_logprobs(path, logprobs, targets, k: int, logprob_dtype: str = "float16", *,
                              model: str = "model", n_params: int = 1_000_000, doc_id=None, n_chars=None,
                              n_bytes=None, attrs: dict | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                              overwrite: bool = False, tables: dict | None = None, extra: dict | None = None,
                              kind: str = "text", **attr_kwargs):
    """Write a store whose every array is computed by brute force from full log-probs; returns the Store.

    ``tables``: non-position arrays to store too (e.g. {"vocab": strings}); ``extra``: optional position arrays
    (e.g. {"item_id": ..., "option_id": ...}); ``kind``: the store kind (classification and masked stores have no
    n_chars/n_bytes; a masked store needs ``extra={"token_index": ...}``).
    """
    arrays = arrays_from_logprobs(logprobs, targets, k, logprob_dtype, doc_id=doc_id, n_chars=n_chars,
                                  n_bytes=n_bytes)
    arrays.update({name: np.asarray(x, POSITION_ARRAYS[name].dtype) for name, x in (extra or {}).items()})
    if kind in ("classification", "masked"):
        arrays.pop("n_chars"), arrays.pop("n_bytes")
    a = synthetic_attrs(model, n_params=n_params, **attr_kwargs)
    for key, value in (attrs or {}).items():
        a[key] = {**a[key], **value} if isinstance(value, dict) and isinstance(a.get(key), dict) else value
    n, v = np.shape(logprobs)
    w = StoreWriter(path, n_positions=n, top_k=k, n_classes=v, logprob_dtype=logprob_dtype, attrs=a,
                    setting_hash=config_hash([a, k, logprob_dtype]), chunk_size=chunk_size, overwrite=overwrite,
                    optional=("entropy", *(extra or {})), kind=kind)
    with w:
        for name, table in (tables or {}).items():
            w.write_table(name, table)
        w.write(0, **arrays)
    return w.close()


# ---------------------------------------------------------------------------------------------- task stores
TASK_METRICS = {"last_word": ["word_ppl", "token_ppl", "acc"], "multiple_choice": ["acc", "acc_norm"]}


def task_attr(kind: str, name: str, n_items: int, metrics=None, protocol: str = "synthetic") -> dict:
    """The ``task`` attribute of a task store (see pipeline.store.tasks)."""
    return {"name": name, "kind": kind, "protocol": protocol,
            "metrics": list(TASK_METRICS[kind] if metrics is None else metrics), "n_items": int(n_items),
            "skipped": {}}


def write_task_store_from_logprobs(path, logprobs, targets, item_id, option_id, tables: dict, kind: str, k: int,
                                   logprob_dtype: str = "float16", *, task_name: str | None = None,
                                   metrics=None, n_chars=None, n_bytes=None, attrs: dict | None = None,
                                   **kwargs):
    """Write a task store (positions ordered by (item, option, token); doc_id = item_id) from full log-probs.

    ``tables``: the int32 task tables (item_label, item_n_options, item_source_index, option_n_chars,
    option_n_bytes; see schema.TASK_TABLES); the layout is checked before anything is written. ``task_name``
    defaults to the dataset name; other keyword arguments go to `write_store_from_logprobs` (model, n_params,
    dataset, split, tokenizer, chunk_size, overwrite, ...).
    """
    from .tasks import check_tables, option_offsets

    tables = {name: np.asarray(x, np.int32) for name, x in tables.items()}
    check_tables(tables)
    option_offsets(item_id, option_id, tables["item_n_options"])
    name = task_name or kwargs.get("dataset", "synthetic_task")
    a = {"task": task_attr(kind, name, len(tables["item_n_options"]), metrics), **(attrs or {})}
    return write_store_from_logprobs(path, logprobs, targets, k, logprob_dtype, doc_id=item_id, n_chars=n_chars,
                                     n_bytes=n_bytes, attrs=a, tables=tables,
                                     extra={"item_id": item_id, "option_id": option_id}, **kwargs)


def random_task(kind: str, n_items: int, rng: np.random.Generator, *, vocab: int = 12, n_models: int = 2,
                n_options=(2, 5), n_tokens=(1, 6), noise=(0.8, 1.6), sharpness: float = 2.0,
                tie_grid: float | None = None, label_noise: float = 1.0):
    """A random task of ``n_items`` items for ``n_models`` noisy models (`random_distributions` per position).

    last_word: one option per item of n_tokens tokens; multiple_choice: n_options options (inclusive range) of
    n_tokens tokens each, the label the option with the best mean model score plus Gumbel noise x label_noise
    (so that the models are better than chance). Returns a dict: targets, logprobs (list per model, (N, vocab)),
    item_id, option_id, n_chars, n_bytes (per position) and tables.
    """
    if kind == "last_word":
        n_opt = np.ones(n_items, np.int64)
    else:
        n_opt = rng.integers(n_options[0], n_options[1] + 1, n_items)
    n_tok = rng.integers(n_tokens[0], n_tokens[1] + 1, int(n_opt.sum()))
    n = int(n_tok.sum())
    targets, lps = random_distributions(n, vocab, rng, n_models=n_models, noise=noise, sharpness=sharpness,
                                        tie_grid=tie_grid)
    row = np.repeat(np.arange(len(n_tok)), n_tok)
    first = np.concatenate([[0], np.cumsum(n_opt)])
    item_of_row = np.repeat(np.arange(n_items), n_opt)
    item_id = item_of_row[row]
    option_id = (np.arange(len(n_tok)) - first[item_of_row])[row]
    n_chars = rng.integers(1, 6, n).astype(np.int32)
    n_bytes = n_chars + (rng.random(n) < 0.2)
    offsets = np.concatenate([[0], np.cumsum(n_tok)])
    opt_chars = np.maximum(np.add.reduceat(n_chars, offsets[:-1]) - 1, 1)  # without the leading space
    opt_bytes = opt_chars + rng.integers(0, 3, len(n_tok))
    if kind == "last_word":
        label = np.zeros(n_items, np.int64)
    else:
        score = np.mean([np.add.reduceat(lp[np.arange(n), targets], offsets[:-1]) for lp in lps], axis=0)
        noisy = score / n_tok + label_noise * rng.gumbel(size=len(n_tok))
        label = np.array([int(np.argmax(noisy[first[i]:first[i + 1]])) for i in range(n_items)])
    tables = {"item_label": label, "item_n_options": n_opt, "item_source_index": np.arange(n_items) * 2,
              "option_n_chars": opt_chars, "option_n_bytes": opt_bytes}
    return {"targets": targets, "logprobs": lps, "item_id": item_id.astype(np.int32),
            "option_id": option_id.astype(np.int32), "n_chars": n_chars, "n_bytes": n_bytes.astype(np.int32),
            "tables": {k: np.asarray(v, np.int32) for k, v in tables.items()}}


def write_random_task_pair(directory, kind: str, n_items: int, seed: int = 0, *, k: int = 6,
                           logprob_dtype: str = "float16", names=(("task-A", 1_000_000_000), ("task-B", 100_000_000)),
                           dataset: str | None = None, split: str = "test", **kwargs) -> list[Path]:
    """Write aligned task stores of ``len(names)`` models (one random task, `random_task`) under
    ``directory/<dataset>/<split>/<model>.zarr``; returns their paths. Keyword arguments not taken by
    `random_task` go to `write_task_store_from_logprobs` (tokenizer, chunk_size, overwrite, ...)."""
    task_keys = ("vocab", "n_options", "n_tokens", "noise", "sharpness", "tie_grid", "label_noise")
    task_kw = {key: kwargs.pop(key) for key in task_keys if key in kwargs}
    rng = np.random.default_rng(seed)
    t = random_task(kind, n_items, rng, n_models=len(names), **task_kw)
    dataset = dataset or ("lambada_synthetic" if kind == "last_word" else "mc_synthetic")
    paths = []
    for lp, (model, params) in zip(t["logprobs"], names):
        p = Path(directory) / dataset / split / f"{model}.zarr"
        write_task_store_from_logprobs(p, lp, t["targets"], t["item_id"], t["option_id"], t["tables"], kind, k,
                                       logprob_dtype, model=model, n_params=params, n_chars=t["n_chars"],
                                       n_bytes=t["n_bytes"], dataset=dataset, split=split, **kwargs)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------- Zipf pairs
def _zipf_block(rng: np.random.Generator, m: int, k: int, vocab: int, start: int):
    """One block of m positions for a primary (A) and a secondary (B) model sharing targets."""
    # Distinct ids per row as cumulative sums of growing gaps: small (frequent) ids are common, as in BPE
    # vocabularies. A and B share the first half of their id sets.
    scale = (np.arange(1, k + 1) ** 1.3)
    scale *= 0.3 * vocab / scale.sum()
    gaps_a = 1 + np.floor(rng.exponential(scale, size=(m, k))).astype(np.int64)
    gaps_b = 1 + np.floor(rng.exponential(scale, size=(m, k))).astype(np.int64)
    gaps_b[:, : k // 2] = gaps_a[:, : k // 2]
    out = []
    for gaps, head_ab in ((gaps_a, (5.0, 2.0)), (gaps_b, (4.0, 2.5))):
        ids = np.cumsum(gaps, axis=1) - 1
        over = ids[:, -1] >= vocab
        if over.any():  # rare: fall back to evenly spread ids
            ids[over] = np.arange(k) * (vocab // k)
        # Rank: smaller ids tend to be more probable, with per-model noise.
        key = np.log1p(ids) + 1.5 * rng.gumbel(size=(m, k))
        order = np.argsort(key, axis=1)
        ids = np.take_along_axis(ids, order, axis=1)
        s = rng.uniform(0.7, 1.5, size=(m, 1))
        head = rng.beta(*head_ab, size=(m, 1))
        # A power law with per-entry log-normal jitter (real top-K lists are not smooth curves), sorted.
        w = np.arange(1, k + 1) ** -s * rng.lognormal(0.0, 0.6, size=(m, k))
        w = -np.sort(-w, axis=1)
        lp = np.log(head * w / w.sum(axis=1, keepdims=True))
        tail = np.log1p(-head[:, 0])
        out.append((ids, lp, tail, head[:, 0]))
    (ids_a, lp_a, _, _), (ids_b, _, _, _) = out
    u = rng.random(m)
    r = np.minimum(1 + rng.geometric(0.25, size=m), k - 1)
    targets = np.where(u < 0.40, ids_a[:, 0],
                       np.where(u < 0.52, ids_b[:, 0],
                                np.where(u < 0.85, ids_a[np.arange(m), r], vocab - 1 - (np.arange(m) % 97))))
    n_chars = (1 + rng.poisson(3.2, size=m)).astype(np.int32)
    n_bytes = n_chars + (rng.random(m) < 0.02)
    doc_id = ((start + np.arange(m)) // 2048).astype(np.int32)
    blocks = []
    for ids, lp, tail, head in out:
        hit = ids == targets[:, None]
        inside = hit.any(axis=1)
        rank_in = hit.argmax(axis=1)
        lp_in = lp[np.arange(m), rank_in]
        lp_out = np.minimum(lp[:, -1], tail) - 0.05 - rng.exponential(1.5, size=m)
        rank_out = np.minimum(k - 1 + rng.geometric(0.05, size=m), vocab - 1)
        ent = -(np.exp(lp) * lp).sum(axis=1) - (1 - head) * (tail - np.log(vocab - k))
        blocks.append({
            "targets": targets.astype(np.int32),
            "target_logprob": np.where(inside, lp_in, lp_out).astype(np.float32),
            "target_rank": np.where(inside, rank_in, rank_out).astype(np.int32),
            "target_ties": np.zeros(m, np.int32),
            "topk_ids": ids.astype(np.int32),
            "topk_logprobs": lp,
            "tail_logmass": tail.astype(np.float32),
            "entropy": ent.astype(np.float32),
            "n_chars": n_chars,
            "n_bytes": n_bytes.astype(np.int32),
            "doc_id": doc_id,
        })
    return blocks


def zipf_blocks(n: int, k: int = 64, vocab: int = 50257, seed: int = 0, logprob_dtype: str = "float16",
                block: int = 131_072):
    """Yield (start, [arrays of A, arrays of B]) for n positions; deterministic given seed, whatever n."""
    for start in range(0, n, block):
        m = min(block, n - start)
        blocks = _zipf_block(np.random.default_rng([seed, start]), m, k, vocab, start)
        for arrays in blocks:
            arrays["topk_logprobs"] = arrays["topk_logprobs"].astype(logprob_dtype)
        yield start, blocks


def write_zipf_pair(directory, n: int, k: int = 64, vocab: int = 50257, seed: int = 0,
                    logprob_dtype: str = "float16", chunk_size: int = DEFAULT_CHUNK_SIZE,
                    block: int = 131_072, overwrite: bool = False) -> tuple[Path, Path]:
    """Write aligned stores ``zipf-A.zarr`` (primary) and ``zipf-B.zarr`` (secondary) with n positions."""
    directory = Path(directory)
    names = (("zipf-A", 1_000_000_000), ("zipf-B", 100_000_000))
    writers = []
    for name, params in names:
        a = synthetic_attrs(name, n_params=params, dataset="zipf", tokenizer="zipf-vocab")
        writers.append(StoreWriter(directory / f"{name}.zarr", n_positions=n, top_k=k, n_classes=vocab,
                                   logprob_dtype=logprob_dtype, attrs=a, chunk_size=chunk_size,
                                   setting_hash=config_hash([a, n, k, vocab, seed, logprob_dtype]),
                                   overwrite=overwrite))
    try:
        for start, blocks in zipf_blocks(n, k, vocab, seed, logprob_dtype, block):
            for w, arrays in zip(writers, blocks):
                w.write(start, **arrays)
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    return directory / "zipf-A.zarr", directory / "zipf-B.zarr"
