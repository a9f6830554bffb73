"""Train one reference model and save it (with its tokenizer) where the extraction stage can load it."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..extraction.datasets import load_documents
from ..extraction.models import count_params, model_source, resolve_device
from . import models as custom
from .config import MARKER, TrainSpec, reuse_trained
from .loop import train_blocks, train_stream
from .wordlevel import build_word_tokenizer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# GPT-2's byte-level BPE as two plain files (OpenAI's release names them encoder.json / vocab.bpe)
GPT2_FILES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


def gpt2_bpe_files(directory: Path) -> tuple[Path, Path] | None:
    """(vocab, merges) of a GPT-2 BPE in `directory` or its data/ folder, when it has no tokenizer.json."""
    for d in (directory, directory / "data"):
        if (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file():
            return None
        for vocab, merges in GPT2_FILES:
            if (d / vocab).is_file() and (d / merges).is_file():
                return d / vocab, d / merges
    return None


def gpt2_tokenizer_from_files(vocab_file: Path, merges_file: Path):
    """GPT2TokenizerFast from a vocabulary JSON and a merges file (first line '#version: ...' skipped)."""
    from transformers import GPT2TokenizerFast

    vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
    lines = Path(merges_file).read_text(encoding="utf-8").split("\n")
    merges = [tuple(x.split()) for x in lines if x.strip() and not x.startswith("#version")]
    return GPT2TokenizerFast(vocab=vocab, merges=merges)


def load_tokenizer(spec: TrainSpec):
    """A HF tokenizer: hub id, directory or package:<module> (a GGUF file in it with tokenizer_gguf_file), or
    a directory / package holding a GPT-2 BPE as vocab.json + merges.txt (or encoder.json + vocab.bpe)."""
    from transformers import AutoTokenizer

    src = model_source(spec.tokenizer)
    kwargs = {"gguf_file": spec.tokenizer_gguf_file} if spec.tokenizer_gguf_file else {}
    files = gpt2_bpe_files(Path(src).expanduser()) if not kwargs and Path(src).expanduser().is_dir() else None
    if files is not None:
        return gpt2_tokenizer_from_files(*files)
    return AutoTokenizer.from_pretrained(src, **kwargs)


def build_model(spec: TrainSpec, vocab_size: int, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    if spec.arch in ("lstm", "gru"):
        cfg = custom.ARRNNConfig(vocab_size=vocab_size, cell=spec.arch, embed_size=spec.embed_size,
                                 hidden_size=spec.hidden_size, num_layers=spec.num_layers, dropout=spec.dropout)
        return custom.ARRNNForCausalLM(cfg)
    if spec.arch == "transformer":
        cfg = custom.ARTransformerConfig(vocab_size=vocab_size, embed_size=spec.embed_size, nhead=spec.nhead,
                                         ffn_size=spec.ffn_size, num_layers=spec.num_layers, dropout=spec.dropout,
                                         seq_len=spec.seq_len)
        return custom.ARTransformerForCausalLM(cfg)
    # SimpleTransformer: a causal GPT-2-architecture decoder of the paper's appendix E.1 sizes.
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=spec.max_length, n_embd=spec.embed_size,
                     n_layer=spec.num_layers, n_head=spec.nhead, n_inner=spec.ffn_size,
                     activation_function="gelu", resid_pdrop=spec.dropout, embd_pdrop=spec.dropout,
                     attn_pdrop=spec.dropout, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(cfg)


def encode_stream(texts: list[str], tokenizer, eos_id: int, cap: int | None) -> torch.Tensor:
    """Documents joined by <eos>, as one id stream (capped at ``cap`` tokens)."""
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.append(eos_id)
        if cap is not None and len(ids) >= cap:
            break
    return torch.tensor(ids[:cap] if cap else ids, dtype=torch.long)


def train(spec: TrainSpec, dataset_spec, out: Path, overwrite: bool = False, resolved: dict | None = None,
          progress: bool = True) -> Path:
    """Train and save to ``out``; an already trained model there is reused unless ``overwrite``."""
    if spec.arch in ("image_finetune", "image_resnet"):  # image classifiers (training/images.py)
        from .images import train_image_classifier

        return train_image_classifier(spec, dataset_spec, out, overwrite=overwrite, resolved=resolved,
                                      progress=progress)
    if spec.arch == "esm":  # a masked protein LM on a sequence dataset
        from .masked import train_masked

        return train_masked(spec, dataset_spec, out, overwrite=overwrite, resolved=resolved, progress=progress)
    out = Path(out)
    if reuse_trained(out, spec.name, resolved, overwrite):
        return out
    seed_everything(spec.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(spec.device)
    docs = load_documents(dataset_spec)
    if spec.arch == "simple_transformer":
        tokenizer = load_tokenizer(spec)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        vocab_size = len(tokenizer)
    else:
        tokenizer = build_word_tokenizer(docs.texts, spec.vocab_max_size, spec.vocab_min_freq)
        eos = tokenizer.eos_token_id
        vocab_size = len(tokenizer)
    ids = encode_stream(docs.texts, tokenizer, eos, spec.max_train_tokens)
    log.info("%s: %d training tokens, vocabulary %d, device %s", spec.name, ids.numel(), vocab_size, device)
    seed_everything(spec.seed)  # the model's init does not depend on how the data was read
    model = build_model(spec, vocab_size, tokenizer).to(device)
    t0 = time.time()
    if spec.arch == "simple_transformer":
        losses = train_blocks(model, ids, epochs=spec.epochs, batch_size=spec.batch_size, grad_accum=spec.grad_accum,
                              max_length=spec.max_length, lr=spec.lr, weight_decay=spec.weight_decay,
                              warmup=spec.warmup, clip=spec.clip, device=device, seed=spec.seed,
                              max_steps=spec.max_steps, progress=progress)
    else:
        losses = train_stream(model, ids, epochs=spec.epochs, batch_size=spec.batch_size, bptt=spec.seq_len,
                              lr=spec.lr, clip=spec.clip, device=device, stateful=spec.arch in ("lstm", "gru"),
                              progress=progress)
    seconds = time.time() - t0
    total, nonembed = count_params(model)
    model.eval()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.to("cpu").save_pretrained(tmp)  # safetensors
    tokenizer.save_pretrained(tmp)
    meta = {"name": spec.name, "arch": spec.arch, "n_params": total, "n_params_nonembed": nonembed,
            "vocab_size": vocab_size, "train_tokens": int(ids.numel()), "train_losses": losses,
            "seconds": round(seconds, 1), "device": str(device), "dataset": docs.meta, "config": resolved or {}}
    (tmp / MARKER).write_text(json.dumps(meta, indent=2, default=str))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)  # the directory appears complete or not at all
    log.info("%s: %d parameters (%d non-embedding), final train loss %.3f, %.0fs; model saved to %s", spec.name,
             total, nonembed, losses[-1], seconds, out)
    return out
