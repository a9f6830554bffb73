"""Small ESM-architecture masked protein LMs trained here (the demo's stand-ins for ESM-2 8M..3B).

The model is `EsmForMaskedLM` built from an `EsmConfig` of ESM-2's shape (rotary positions, pre-LayerNorm
blocks, final LayerNorm, tied MLM head) at a small size, on ESM-2's 33-token alphabet: the tokenizer is an
`EsmTokenizer` over a vocab.txt written here, so the saved directory loads exactly like
facebook/esm2_* (AutoTokenizer + AutoModelForMaskedLM) and its stores pair with theirs' alphabet.

Recipe (BERT/ESM masked-LM objective): each step takes `batch_size` training sequences (a seeded permutation
per epoch), a seeded random crop of at most `seq_len` residues each with <cls> ... <eos> around it, chooses 15%
of the residues (at least one) and replaces 80% of them by <mask>, 10% by a random amino acid and leaves 10%;
the loss is the cross-entropy on the chosen residues. AdamW, linear warm-up then cosine decay, gradient
clipping. max_position_embeddings = seq_len + 4, so the extraction's windows (capacity seq_len + 2 tokens)
have the training crops' length.
"""

from __future__ import annotations

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
from ..extraction.errors import EmptyDatasetError
from ..extraction.models import count_params, resolve_device
from ..extraction.sequences import ESM_ALPHABET, Masking, encode, load_sequences
from .config import MARKER, TrainSpec, reuse_trained

log = logging.getLogger(__name__)
AMINO_ACIDS = "LAGVSERTIDPKQNFYMHWC"   # the 20 standard residues (random replacements are drawn from them)


def esm_tokenizer(directory: Path):
    """ESM-2's tokenizer (33 tokens, ids as facebook/esm2_*) from a vocab.txt written into `directory`."""
    from transformers import EsmTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(ESM_ALPHABET) + "\n")
    return EsmTokenizer(vocab_file=str(vocab))


def esm_config(spec: TrainSpec, tokenizer):
    from transformers import EsmConfig

    return EsmConfig(vocab_size=len(ESM_ALPHABET), mask_token_id=tokenizer.mask_token_id,
                     pad_token_id=tokenizer.pad_token_id, hidden_size=spec.embed_size,
                     num_hidden_layers=spec.num_layers, num_attention_heads=spec.nhead,
                     intermediate_size=spec.ffn_size, hidden_dropout_prob=spec.dropout,
                     attention_probs_dropout_prob=spec.dropout, max_position_embeddings=spec.seq_len + 4,
                     position_embedding_type="rotary", emb_layer_norm_before=False, token_dropout=False,
                     layer_norm_eps=1e-5, vocab_list=list(ESM_ALPHABET), tie_word_embeddings=True)


def mlm_batch(seqs: list[np.ndarray], rng: np.random.Generator, crop: int, ids: dict, fraction: float = 0.15):
    """(input_ids, attention_mask, labels) of one training batch; labels -100 except at the chosen residues."""
    rows = []
    for s in seqs:
        if len(s) > crop:
            a = int(rng.integers(0, len(s) - crop + 1))
            s = s[a:a + crop]
        rows.append(s)
    T = max(len(s) for s in rows) + 2
    x = np.full((len(rows), T), ids["pad"], np.int64)
    y = np.full((len(rows), T), -100, np.int64)
    for r, s in enumerate(rows):
        n = len(s)
        x[r, 0], x[r, 1:n + 1], x[r, n + 1] = ids["cls"], s, ids["eos"]
        k = max(1, int(round(fraction * n)))
        pos = rng.choice(n, size=k, replace=False) + 1
        y[r, pos] = x[r, pos]
        u = rng.random(k)
        x[r, pos[u < 0.8]] = ids["mask"]
        swap = pos[(u >= 0.8) & (u < 0.9)]
        x[r, swap] = rng.choice(ids["amino"], size=len(swap))
    attn = (x != ids["pad"]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(attn), torch.from_numpy(y)


def train_masked(spec: TrainSpec, dataset_spec: DatasetSpec, out: Path, overwrite: bool = False,
                 resolved: dict | None = None, progress: bool = True) -> Path:
    """Train a small ESM on the dataset's split and save it (safetensors + tokenizer) to `out`."""
    from transformers import EsmForMaskedLM

    out = Path(out)
    if reuse_trained(out, spec.name, resolved, overwrite):
        return out
    torch.manual_seed(spec.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(spec.device)
    masking = Masking.from_dict(dataset_spec.masking)
    seqs = load_sequences(dataset_spec, masking)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = esm_tokenizer(tmp)
    enc = encode(seqs, tokenizer, masking)
    if not enc.ids:
        raise EmptyDatasetError(f"dataset {dataset_spec.name!r}/{dataset_spec.split} has no sequence to train on "
                                f"(skipped: {enc.skipped})")
    data = enc.ids
    if spec.max_train_tokens:
        total, keep = 0, 0
        while keep < len(data) and total < spec.max_train_tokens:
            total += len(data[keep])
            keep += 1
        data = data[:keep]
    vocab = tokenizer.get_vocab()
    ids = {"pad": tokenizer.pad_token_id, "cls": tokenizer.cls_token_id, "eos": tokenizer.eos_token_id,
           "mask": tokenizer.mask_token_id, "amino": np.array([vocab[a] for a in AMINO_ACIDS], np.int64)}
    torch.manual_seed(spec.seed)  # the init does not depend on how the data was read
    model = EsmForMaskedLM(esm_config(spec, tokenizer)).to(device)
    per_epoch = math.ceil(len(data) / spec.batch_size)
    steps = min(spec.max_steps or per_epoch * spec.epochs, per_epoch * spec.epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    warm = int(spec.warmup * steps)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = np.random.default_rng(spec.seed)
    log.info("%s: %d training sequences (%d residues; %d skipped), %d steps of %d, device %s", spec.name, len(data),
             sum(len(s) for s in data), sum(enc.skipped.values()), steps, spec.batch_size, device)
    t0, step, losses = time.time(), 0, []
    bar = tqdm(total=steps, disable=not progress, desc=spec.name, unit="step")
    model.train()
    while step < steps:
        order = rng.permutation(len(data))
        total, count = 0.0, 0
        for b in range(per_epoch):
            if step >= steps:
                break
            batch = [data[i] for i in order[b * spec.batch_size:(b + 1) * spec.batch_size]]
            x, attn, y = (t.to(device) for t in mlm_batch(batch, rng, spec.seq_len, ids))
            loss = model(input_ids=x, attention_mask=attn, labels=y).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if spec.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip)
            opt.step()
            sched.step()
            total, count, step = total + loss.item(), count + 1, step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.3f}")
        losses.append(total / max(count, 1))
    bar.close()
    seconds = time.time() - t0
    n_total, n_nonembed = count_params(model)
    model.eval()
    model.to("cpu").save_pretrained(tmp)  # safetensors
    tokenizer.save_pretrained(tmp)
    meta = {"name": spec.name, "arch": spec.arch, "n_params": n_total, "n_params_nonembed": n_nonembed,
            "vocab_size": len(ESM_ALPHABET), "train_sequences": len(data),
            "train_residues": int(sum(len(s) for s in data)), "skipped": enc.skipped, "steps": steps,
            "train_losses": losses, "seconds": round(seconds, 1), "device": str(device), "dataset": seqs.meta,
            "config": resolved or {}}
    (tmp / MARKER).write_text(json.dumps(meta, indent=2, default=str))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)  # the directory appears complete or not at all
    log.info("%s: %d parameters (%d non-embedding), final train loss %.3f (PPL %.2f on masked residues), %.0fs; "
             "saved to %s", spec.name, n_total, n_nonembed, losses[-1], math.exp(losses[-1]), seconds, out)
    return out
