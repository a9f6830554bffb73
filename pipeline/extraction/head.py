"""Per-position arrays from the LM head, in float32 (DESIGN sections 2, 3 and 6).

For a chunk of P positions with final hidden states h (P, d), the LM head weight W (V, d) and the
targets t (P,):

    z        = h W^T (+ b)                    (P, V) float32 logits; never bf16/fp16 (ties!)
    m        = max_j z_j                      taken from top-K (the first top value), no extra pass
    s        = sum_j exp(z_j - m)             lse = m + log s   (float32 logsumexp)
    top-K    = topk(z) - lse                  ids most probable first
    target   = z_t - lse; rank = #{j: z_j > z_t}; ties = #{j != t: z_j == z_t}
    entropy  = log s - sum_j exp(z_j - m) (z_j - m) / s        (no cancellation: z - m <= 0)
    tail     = log(sum_{j not in top-K} exp(z_j - m)) - log s  summed directly, never 1 - sum(top);
               rows whose tail underflows are redone as a logsumexp over the tail's own maximum

Top-K on raw logits minus the logsumexp is the cheapest order on CPU (DESIGN section 6). The
positions are processed in chunks so a 152k vocabulary at context 2048 fits a 24 GB GPU.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import NonFiniteLogitsError
from .kernels import rank_ties

ARRAY_NAMES = (
    "target_logprob",
    "target_rank",
    "target_ties",
    "topk_ids",
    "topk_logprobs",
    "tail_logmass",
    "entropy",
)


def head_chunk_size(n_classes: int, memory_mb: float, device_type: str = "cuda") -> int:
    """Positions per chunk so that the two (P, V) float32 work tensors fit in memory_mb; on CPU at
    most 128 positions (measured fastest: the passes after the matmul stay in cache)."""
    per_position = 2 * 4 * n_classes
    cap = 128 if device_type == "cpu" else 4096
    return int(max(1, min(cap, (memory_mb * 2**20) // per_position)))


@torch.no_grad()
def score_logits(logits: torch.Tensor, targets: torch.Tensor, k: int, entropy: bool = True,
                 where: str = "") -> dict[str, torch.Tensor]:
    """All position arrays from float32 logits (P, V); `logits` is overwritten (used as workspace).

    Returns float32 / int32 tensors on the logits' device; `where` names the positions in errors.
    """
    if logits.dtype != torch.float32:
        raise TypeError(f"score_logits needs float32 logits, got {logits.dtype}")
    n_pos, n_classes = logits.shape
    tgt = targets.to(device=logits.device, dtype=torch.long).view(-1, 1)

    topv, topi = torch.topk(logits, k, dim=1, largest=True, sorted=True)        # (P, K)
    m = topv[:, :1]                                                            # (P, 1) row max
    zt = logits.gather(1, tgt)                                                 # (P, 1) target logit
    if logits.device.type == "cpu":  # one fused pass (numba); torch needs two passes + temporaries
        r, t = rank_ties(logits.numpy(), zt.squeeze(1).numpy())
        rank, ties = torch.from_numpy(r), torch.from_numpy(t)
    else:
        rank = (logits > zt).sum(1, dtype=torch.int32)
        ties = (logits == zt).sum(1, dtype=torch.int32) - 1

    z = logits.sub_(m)                                                         # z - m <= 0, in place
    e = torch.exp(z)                                                           # (P, V)
    s = e.sum(1)                                                               # (P,)
    log_s = torch.log(s)
    lse = m.squeeze(1) + log_s
    out = {
        "target_logprob": zt.squeeze(1) - lse,
        "target_rank": rank,
        "target_ties": ties,
        "topk_ids": topi.to(torch.int32),
        "topk_logprobs": topv - lse.unsqueeze(1),
    }
    if entropy:
        ez = torch.linalg.vecdot(e, z)                                         # sum_j e_j (z_j - m)
        out["entropy"] = log_s - ez / s
    if k < n_classes:
        e.scatter_(1, topi, 0.0)
        tail = e.sum(1)
        out["tail_logmass"] = torch.log(tail) - log_s
        # exp(z - m) underflows below ~e^-87 (denormals to e^-103): redo the rare tiny tails as a
        # logsumexp over their own maximum so they stay finite and exact
        tiny = (tail < 1e-30).nonzero().squeeze(1)
        if len(tiny):
            zr = z[tiny].scatter_(1, topi[tiny], -torch.inf)
            out["tail_logmass"][tiny] = torch.logsumexp(zr, 1) - log_s[tiny]
    else:
        out["tail_logmass"] = torch.full((n_pos,), -torch.inf, device=logits.device)

    # Any NaN or +-inf logit makes m, s or the entropy non-finite (0 * -inf = nan): checked on the
    # reductions, not with another pass over (P, V).
    bad = ~(torch.isfinite(m.squeeze(1)) & torch.isfinite(s) & torch.isfinite(zt.squeeze(1)))
    if entropy:
        bad |= ~torch.isfinite(out["entropy"])
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise NonFiniteLogitsError(
            f"the model produced NaN/inf logits at position {first} of the chunk {where} "
            f"({int(bad.sum())} of {n_pos} positions affected); try model.dtype=float32, "
            "check the weights, or report the input window"
        )
    return out


@torch.no_grad()
def score_hidden(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 targets: torch.Tensor, k: int, entropy: bool = True, chunk: int = 256,
                 where: str = "") -> dict[str, np.ndarray]:
    """Apply the LM head in float32 over position chunks of `hidden` (P, d) and score every position.

    weight: (V, d) float32 on the hidden's device; returns numpy arrays on the CPU.
    """
    parts: list[dict[str, torch.Tensor]] = []
    for lo in range(0, hidden.shape[0], chunk):
        h = hidden[lo:lo + chunk].to(torch.float32)
        logits = h @ weight.T
        if bias is not None:
            logits += bias
        parts.append(score_logits(logits, targets[lo:lo + chunk], k, entropy, f"{where}+{lo}"))
    return _to_numpy(parts)


def score_logits_chunked(logits: torch.Tensor, targets: torch.Tensor, k: int, entropy: bool = True,
                         chunk: int = 256, where: str = "") -> dict[str, np.ndarray]:
    """Fallback path for models whose logits are not a plain linear head: logits (P, V) any dtype."""
    parts = []
    for lo in range(0, logits.shape[0], chunk):
        z = logits[lo:lo + chunk].to(torch.float32, copy=True)
        parts.append(score_logits(z, targets[lo:lo + chunk], k, entropy, f"{where}+{lo}"))
    return _to_numpy(parts)


def _to_numpy(parts: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    out = {}
    for name in parts[0]:
        t = torch.cat([p[name] for p in parts]) if len(parts) > 1 else parts[0][name]
        out[name] = t.cpu().numpy()
    return out
