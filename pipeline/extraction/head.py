"""Per-position arrays from the LM head, in float32 (DESIGN sections 2, 3 and 6).

For a chunk of P positions with final hidden states h (P, d), the LM head weight W (V, d) and the
targets t (P,):

    z        = h W^T (+ b)                    (P, V) float32 logits; never bf16/fp16 (ties!)
    top-K+1  = topk(z, K + 1)                 m = the first (row max), c = the K-th, mt = the (K+1)-th
    r        = sum_{j != argmax} exp(z_j - m)            s = 1 + r, log s = log1p(r)
    target   = (z_t - m) - log s;  rank = #{j: z_j > z_t};  ties = #{j != t: z_j == z_t}
    top-K    = (topv - m) - log s             ids most probable first
    tail     = log(tail / s) = -softplus(log1p(r_top) - (mt - m) - log T),   T = sum_tail exp(z_j - mt)
    entropy  = log s - sum_j exp(z_j - m) (z_j - m) / s        (no cancellation: z - m <= 0)

Every reduction (the logsumexp, the tail sum, the entropy) is accumulated in float64 from float64 exps of
the exact differences z_j - m (two float32 values differ exactly in float64) and every log is taken in
float64, so each stored float32 value is the float64 result rounded once: within half an ulp of float32
(plus V * 2^-53 relative) of the exact value for these float32 logits, on CPU and CUDA alike (DESIGN
section 3, "What exact and certified rest on"). r (not s) keeps near-certain rows exact (s = 1 + 1e-12);
the tail is summed relative to its own maximum, so it never underflows and is never 1 - sum(top).
On CPU one fused numba pass (`kernels.head_rows_f32`) does the sums, rank and ties; on CUDA torch does.
The positions are processed in chunks so a 152k vocabulary at context 2048 fits a 24 GB GPU.

With a vocabulary mask of the space-initial ids (`words.py`), `bow_logmass` = log of their probability mass
(DESIGN section 7) comes from the same pass: the masked (B) and unmasked (N) masses are each split into the
top-K ids above the K-th value, the ids equal to it and the tail, every part summed in float64 relative to its
own maximum and combined in the log domain, and bow = log(B / (B + N)) = -softplus(log N - log B): no
cancellation, whether the next token is almost surely space-initial or almost surely not. A tail part that
sums below 1e-200 relative to the tail's maximum (terms may have underflowed) is recomputed exactly for its row.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import NonFiniteLogitsError
from .kernels import head_rows, head_rows_bow

ARRAY_NAMES = (
    "target_logprob",
    "target_rank",
    "target_ties",
    "topk_ids",
    "topk_logprobs",
    "tail_logmass",
    "entropy",
)
BOW_TINY = 1e-200  # a tail part summing below this (relative to the tail max) is recomputed for its row


def head_chunk_size(n_classes: int, memory_mb: float, device_type: str = "cuda") -> int:
    """Positions per chunk so that the (P, V) work tensors fit in memory_mb: on CUDA the float32 logits, the
    float64 differences and exps and the masks (24 B per class); on CPU the logits and the matmul's output (the
    fused kernel needs none), at most 128 positions (measured fastest: the passes after the matmul stay in
    cache)."""
    per_position = (24 if device_type != "cpu" else 8) * n_classes
    cap = 128 if device_type == "cpu" else 4096
    return int(max(1, min(cap, (memory_mb * 2**20) // per_position)))


@torch.no_grad()
def score_logits(logits: torch.Tensor, targets: torch.Tensor, k: int, entropy: bool = True,
                 where: str = "", bow_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All position arrays from float32 logits (P, V); `logits` is not modified.

    Returns float32 / int32 tensors on the logits' device; `where` names the positions in errors. The
    float32 values are float64 results rounded once (see the module docstring). With `bow_mask` ((V,) bool on
    the logits' device: the space-initial ids) `bow_logmass` is returned too.
    """
    if logits.dtype != torch.float32:
        raise TypeError(f"score_logits needs float32 logits, got {logits.dtype}")
    n_pos, n_classes = logits.shape
    if bow_mask is not None and tuple(bow_mask.shape) != (n_classes,):
        raise ValueError(f"bow_mask has shape {tuple(bow_mask.shape)}, expected ({n_classes},): one entry per logit")
    tgt = targets.to(device=logits.device, dtype=torch.long).view(-1, 1)
    has_tail = k < n_classes
    # K + 1 values: the (K+1)-th is the tail's maximum, which the tail sum is taken relative to
    topv, topi = torch.topk(logits, k + 1 if has_tail else k, dim=1, largest=True, sorted=True)
    zt = logits.gather(1, tgt).squeeze(1)                                      # (P,) target logit
    if has_tail:
        kth, mt = topv[:, k - 1].contiguous(), topv[:, k].contiguous()
    else:  # no tail: no logit is below -inf; sums relative to the row max (all terms masked out)
        kth, mt = torch.full_like(zt, -torch.inf), topv[:, 0].contiguous()
    sums = _row_sums(logits, zt, kth, mt, bow_mask)
    rank, ties, n_gt, n_eq, tsum, usum = sums[:6]
    red = _finish(topv[:, :k], zt, mt, k, has_tail, n_gt, n_eq, tsum, usum)
    out = {
        "target_logprob": red["target_logprob"].to(torch.float32),
        "target_rank": rank,
        "target_ties": ties,
        "topk_ids": topi[:, :k].to(torch.int32),
        "topk_logprobs": red["topk_logprobs"].to(torch.float32),
        "tail_logmass": red["tail_logmass"].to(torch.float32),
    }
    if entropy:
        out["entropy"] = red["entropy"].to(torch.float32)
    if bow_mask is not None:
        out["bow_logmass"] = _bow_logmass(logits, topv[:, :k], topi[:, :k], kth, mt, has_tail, n_eq, *sums[6:],
                                          bow_mask).to(torch.float32)

    # Any NaN or +-inf logit makes the max, the sums or the entropy's numerator non-finite (0 * inf = nan
    # where a term is masked): checked on the reductions, not with another pass over (P, V).
    bad = ~(torch.isfinite(red["m"]) & torch.isfinite(red["r"]) & torch.isfinite(red["num"]) & torch.isfinite(zt))
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise NonFiniteLogitsError(
            f"the model produced NaN/inf logits at position {first} of the chunk {where} "
            f"({int(bad.sum())} of {n_pos} positions affected); try model.dtype=float32, "
            "check the weights, or report the input window"
        )
    return out


def _row_sums(logits, zt, kth, mt, bow=None):
    """(rank, ties, n_gt, n_eq, tsum, usum) per row, see `kernels.head_rows_f32`; with bow (the space-initial
    mask) also (bsum, nsum, b_eq), see `kernels.head_rows_bow_f32`."""
    if logits.device.type == "cpu":
        return _row_sums_cpu(logits, zt, kth, mt, bow)
    return _row_sums_torch(logits, zt, kth, mt, bow)


def _row_sums_cpu(logits, zt, kth, mt, bow=None):
    """One fused numba pass (torch needs several passes and (P, V) temporaries)."""
    if bow is not None:
        sums = head_rows_bow(logits.numpy(), zt.numpy(), kth.numpy(), mt.numpy(), bow.numpy())
        return tuple(torch.from_numpy(x) for x in sums)
    return tuple(torch.from_numpy(x) for x in head_rows(logits.numpy(), zt.numpy(), kth.numpy(), mt.numpy()))


def _row_sums_torch(logits, zt, kth, mt, bow=None):
    """The same sums with torch reductions (CUDA; on CPU only in tests): float64 exp and sums."""
    i32 = torch.int32
    rank = (logits > zt[:, None]).sum(1, dtype=i32)
    ties = (logits == zt[:, None]).sum(1, dtype=i32) - 1
    n_gt = (logits > kth[:, None]).sum(1, dtype=i32)
    n_eq = (logits == kth[:, None]).sum(1, dtype=i32)
    d = logits.to(torch.float64).sub_(mt.to(torch.float64)[:, None])        # exact: z - mt of two float32
    p = torch.exp(d).masked_fill_(~(logits < kth[:, None]), 0.0)              # the tail only (NaN -> 0)
    out = (rank, ties, n_gt, n_eq, p.sum(1), torch.linalg.vecdot(p, d))
    if bow is None:
        return out
    w = bow.to(torch.float64)
    b_eq = ((logits == kth[:, None]) & bow).sum(1, dtype=i32)
    return out + (p @ w, p @ (1.0 - w), b_eq)                                   # products by 0/1 are exact


def _bow_logmass(logits, topv, topi, kth, mt, has_tail, n_eq, bsum, nsum, b_eq, bow) -> torch.Tensor:
    """float64 log of the probability mass of the ids in `bow` (module docstring): the masked (B) and
    unmasked (N) masses as logs relative to the row max m, each the log-sum of three parts (top-K ids above
    the K-th value c, ids equal to c, tail ids below c), then log(B / (B + N)) = -softplus(log N - log B).
    Column 0 of the (P, 2, .) work tensors is B, column 1 is N."""
    f64, ninf = torch.float64, -torch.inf
    m = topv[:, 0].to(f64)
    top = topv.to(f64) - m[:, None]
    in_bow = bow[topi.long()]
    above = topv > kth[:, None]                                                  # ids equal to c: counted below
    sel = torch.stack([above & in_bow, above & ~in_bow], 1)                      # (P, 2, K)
    parts = [torch.logsumexp(top[:, None, :].masked_fill(~sel, ninf), 2)]        # (P, 2)
    if has_tail:
        dc = kth.to(f64) - m
        parts.append(torch.log(torch.stack([b_eq, n_eq - b_eq], 1).to(f64)) + dc[:, None])  # log 0 = -inf
        dm = mt.to(f64) - m
        sums = torch.stack([bsum, nsum], 1).to(f64)
        tail = torch.log(sums) + dm[:, None]
        redo = (sums < BOW_TINY).any(1)                                          # empty, or terms underflowed
        if bool(redo.any()):
            rows = redo.nonzero()[:, 0]
            z = logits[rows]
            below = z < kth[rows, None]
            zd = z.to(f64)
            tail[rows, 0] = torch.logsumexp(zd.masked_fill(~(below & bow), ninf), 1) - m[rows]
            tail[rows, 1] = torch.logsumexp(zd.masked_fill(~(below & ~bow), ninf), 1) - m[rows]
        parts.append(tail)
    log_bn = torch.logsumexp(torch.stack(parts, 2), 2) if len(parts) > 1 else parts[0]
    return -_softplus(log_bn[:, 1] - log_bn[:, 0])


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) to full relative precision for every x (torch's cuts over to x at x > 20)."""
    return x.clamp(min=0.0) + torch.log1p(torch.exp(-x.abs()))


def _finish(topv, zt, mt, k, has_tail, n_gt, n_eq, tsum, usum) -> dict[str, torch.Tensor]:
    """float64 log-probs, tail and entropy from the top-K values and the tail sums (module docstring)."""
    f64 = torch.float64
    m = topv[:, 0].to(f64)
    top = topv.to(f64) - m[:, None]                                            # z - m <= 0, exact
    e_top = torch.exp(top)
    r_top = e_top[:, 1:].sum(1)                                                # s = 1 + r: log s = log1p(r)
    num = torch.linalg.vecdot(e_top, top)                                      # sum e (z - m) <= 0
    r = r_top
    if has_tail:
        t = tsum.to(f64) + (n_eq - (k - n_gt)).clamp(min=0).to(f64)           # + the K-th value's ties left out
        dm = mt.to(f64) - m
        scale = torch.exp(dm)                                                  # may underflow: tail negligible
        r = r_top + scale * t
        num = num + scale * (usum.to(f64) + dm * t)
        tail = -_softplus(torch.log1p(r_top) - dm - torch.log(t))              # log(tail / s), no cancellation
    else:
        tail = torch.full_like(m, -torch.inf)
    log_s = torch.log1p(r)
    return {"m": m, "r": r, "num": num, "target_logprob": (zt.to(f64) - m) - log_s,
            "topk_logprobs": top - log_s[:, None], "tail_logmass": tail, "entropy": log_s - num / (1.0 + r)}


@torch.no_grad()
def score_hidden(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 targets: torch.Tensor, k: int, entropy: bool = True, chunk: int = 256,
                 where: str = "", bow_mask: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Apply the LM head in float32 over position chunks of `hidden` (P, d) and score every position.

    weight: (V, d) float32 on the hidden's device; returns numpy arrays on the CPU.
    """
    parts: list[dict[str, torch.Tensor]] = []
    for lo in range(0, hidden.shape[0], chunk):
        h = hidden[lo:lo + chunk].to(torch.float32)
        logits = h @ weight.T
        if bias is not None:
            logits += bias
        parts.append(score_logits(logits, targets[lo:lo + chunk], k, entropy, f"{where}+{lo}", bow_mask))
    return _to_numpy(parts)


def score_logits_chunked(logits: torch.Tensor, targets: torch.Tensor, k: int, entropy: bool = True,
                         chunk: int = 256, where: str = "", bow_mask: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Fallback path for models whose logits are not a plain linear head: logits (P, V) any dtype."""
    parts = []
    for lo in range(0, logits.shape[0], chunk):
        z = logits[lo:lo + chunk].to(torch.float32)  # score_logits leaves it unmodified: no copy
        parts.append(score_logits(z, targets[lo:lo + chunk], k, entropy, f"{where}+{lo}", bow_mask))
    return _to_numpy(parts)


def _to_numpy(parts: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    out = {}
    for name in parts[0]:
        t = torch.cat([p[name] for p in parts]) if len(parts) > 1 else parts[0][name]
        out[name] = t.cpu().numpy()
    return out
