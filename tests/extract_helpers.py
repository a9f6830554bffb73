"""Helpers for the extraction tests: a tiny byte-level tokenizer, tiny random-init models of every
supported architecture saved with save_pretrained (loaded through the same path as a hub id), and a
brute-force reference built from the model's own full logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline.store.synthetic import arrays_from_logprobs

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Zebras graze; owls hoot at night.",
    "Numbers like 3.14159 and 2,718 appear in text, as do émigrés, naïve cafés and 東京 — and emoji 🙂.",
    "Language models predict the next token. A cache of top-K predictions answers fusion questions later.",
    "Wikipedia articles describe history, science, people, places and everyday life in many languages.",
]
ARCHS = ("gpt2", "gpt_neox", "llama", "qwen2", "mamba", "rwkv")


def make_tokenizer(directory: Path, vocab_size: int = 300):
    """A byte-level BPE tokenizer (GPT-2 style; decode(encode(x)) == x) trained on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tok.save_pretrained(directory)
    return tok


def tiny_config(arch: str, vocab: int, max_len: int = 64, seed_scale: float = 0.5):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, MambaConfig, Qwen2Config, RwkvConfig

    common = {"initializer_range": seed_scale, "bos_token_id": 0, "eos_token_id": 0}
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=max_len, n_embd=32, n_layer=2, n_head=2, **common)
    if arch == "gpt_neox":  # logit width wider than the tokenizer, as Pythia's
        return GPTNeoXConfig(vocab_size=vocab + 16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=max_len, tie_word_embeddings=False,
                             **common)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_len,
                           tie_word_embeddings=False, **common)
    if arch == "qwen2":
        return Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_len,
                           tie_word_embeddings=True, **common)
    if arch == "mamba":
        return MambaConfig(vocab_size=vocab, hidden_size=32, state_size=8, num_hidden_layers=2, **common)
    if arch == "rwkv":
        return RwkvConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                          intermediate_size=64, context_length=max_len,
                          bos_token_id=0, eos_token_id=0)
    raise ValueError(arch)


def make_model(directory: Path, arch: str, max_len: int = 64, seed: int = 0) -> Path:
    """Tokenizer + random-init model of `arch` saved to `directory` (a stand-in for a hub download)."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(directory)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tok), max_len))
    if arch in ("gpt2", "rwkv"):  # make the distributions peaked enough to be interesting
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(2.0 if p.dim() > 1 else 1.0)
    model.save_pretrained(directory)
    return directory


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


@torch.no_grad()
def reference_arrays(lm, stream, windows, k: int) -> dict[str, np.ndarray]:
    """Brute force: model(...).logits per window (batch 1), float64 log_softmax, pipeline.store.synthetic."""
    lps, tgts = [], []
    for i in range(len(windows)):
        seg = stream.segments[windows.seg[i]]
        a, c, d = windows.a[i], windows.c[i], windows.d[i]
        ids = torch.from_numpy(seg.seq[a:d - 1]).view(1, -1)
        logits = lm.model(input_ids=ids).logits[0].double()
        j = c + np.flatnonzero(seg.scored[c:d])
        lps.append(torch.log_softmax(logits[j - 1 - a], -1).numpy())
        tgts.append(seg.seq[j])
    meta = stream.position_arrays(windows, 0, len(windows))
    return arrays_from_logprobs(np.concatenate(lps), np.concatenate(tgts), k, "float32", doc_id=meta["doc_id"],
                                n_chars=meta["n_chars"], n_bytes=meta["n_bytes"]) | {"_lp": np.concatenate(lps)}


def assert_matches_reference(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], lp_tol: float = 1e-4):
    """Values to tolerance; ids checked by the reference log-prob they point at (near-ties may reorder)."""
    lp = ref["_lp"]
    for name in ("targets", "n_chars", "n_bytes", "doc_id"):
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    np.testing.assert_allclose(got["target_logprob"], ref["target_logprob"], atol=lp_tol, rtol=0)
    np.testing.assert_allclose(got["entropy"], ref["entropy"], atol=lp_tol, rtol=1e-5)
    tail_ref, tail = ref["tail_logmass"], got["tail_logmass"]
    assert np.array_equal(np.isinf(tail_ref), np.isinf(tail))
    fin = np.isfinite(tail_ref)
    np.testing.assert_allclose(tail[fin], tail_ref[fin], atol=1e-3, rtol=1e-4)
    top = got["topk_logprobs"].astype(np.float64)
    tol = lp_tol if got["topk_logprobs"].dtype == np.float32 else 2e-3 * np.maximum(1, np.abs(top))
    np.testing.assert_allclose(top, ref["topk_logprobs"].astype(np.float64), atol=np.max(tol), rtol=0)
    pointed = np.take_along_axis(lp, got["topk_ids"].astype(np.int64), 1)
    np.testing.assert_allclose(pointed, ref["topk_logprobs"].astype(np.float64), atol=np.max(tol), rtol=0)
    assert all(len(set(row)) == len(row) for row in got["topk_ids"].tolist()), "duplicate ids in a top-K row"
    # rank / ties exact up to logits within 1e-5 of the target's (float32 matmul order)
    lt = np.take_along_axis(lp, ref["targets"].astype(np.int64)[:, None], 1)
    eps = 1e-5
    lo = (lp > lt + eps).sum(1)
    hi = (lp > lt - eps).sum(1) - 1
    rank, ties = got["target_rank"], got["target_ties"]
    assert np.all((lo <= rank) & (rank + ties <= hi)), "target_rank/ties outside the reference bounds"
    exact = lo == (lp > lt).sum(1)
    near_free = exact & (hi == lo)
    np.testing.assert_array_equal(rank[near_free], ref["target_rank"][near_free])
    np.testing.assert_array_equal(ties[near_free], ref["target_ties"][near_free])
