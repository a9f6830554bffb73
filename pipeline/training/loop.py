"""Training loops.

* ``train_stream``: the paper's section 5.3 recipe (PyTorch word_language_model): the token stream is cut into
  ``batch_size`` parallel columns and read in segments of ``bptt`` tokens; recurrent models carry their
  (detached) state from one segment to the next. Adam, cross-entropy.
* ``train_blocks``: the section 5.2 SimpleTransformer recipe: blocks of ``max_length`` tokens, shuffled with the
  seed, AdamW, cosine schedule with warm-up, gradient accumulation and clipping, mixed precision on CUDA.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from tqdm import tqdm

from .config import TrainConfigError

log = logging.getLogger(__name__)


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) -> (batch_size, N // batch_size): column b holds a contiguous stretch of the stream."""
    n = ids.numel() // batch_size
    return ids[: n * batch_size].view(batch_size, n)


def _state_detach(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def train_stream(model, ids: torch.Tensor, *, epochs: int, batch_size: int, bptt: int, lr: float,
                 clip: float | None, device: torch.device, stateful: bool, progress: bool = True) -> list[float]:
    """Returns the mean training loss of each epoch."""
    data = batchify(ids, batch_size).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    n_seg = math.ceil((data.shape[1] - 1) / bptt)
    for epoch in range(epochs):
        model.train()
        state, total, count = None, 0.0, 0
        bar = tqdm(range(0, data.shape[1] - 1, bptt), total=n_seg, desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress, unit="seg")
        for i in bar:
            x = data[:, i: i + bptt]
            y = data[:, i + 1: i + 1 + bptt]
            x = x[:, : y.shape[1]]
            kwargs = {"past_key_values": state, "use_cache": True} if stateful else {}
            out = model(input_ids=x, **kwargs)
            loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if stateful:
                state = _state_detach(out.past_key_values)
            total += loss.item() * y.numel()
            count += y.numel()
            bar.set_postfix(loss=f"{total / count:.3f}")
        losses.append(total / max(count, 1))
        log.info("epoch %d: train loss %.4f (ppl %.1f)", epoch + 1, losses[-1], math.exp(min(losses[-1], 50)))
    return losses


def train_blocks(model, ids: torch.Tensor, *, epochs: int, batch_size: int, grad_accum: int, max_length: int,
                 lr: float, weight_decay: float, warmup: float, clip: float | None, device: torch.device,
                 seed: int, max_steps: int | None = None, progress: bool = True) -> list[float]:
    n_blocks = ids.numel() // max_length
    if n_blocks < batch_size:
        raise TrainConfigError(f"{ids.numel()} training tokens make {n_blocks} blocks of {max_length}; need at least "
                         f"batch_size={batch_size}: lower max_length or add data")
    blocks = ids[: n_blocks * max_length].view(n_blocks, max_length)
    steps_per_epoch = n_blocks // (batch_size * grad_accum) or 1
    total_steps = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n_warm = int(warmup * total_steps)

    def schedule(step: int) -> float:  # linear warm-up, then cosine to 0 (transformers' cosine schedule)
        if step < n_warm:
            return (step + 1) / max(1, n_warm)
        return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, total_steps - n_warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    gen = torch.Generator().manual_seed(seed)
    step, losses = 0, []
    bar = tqdm(total=total_steps, desc="training", disable=not progress, unit="step")
    t0 = time.time()
    while step < total_steps:
        model.train()
        order = torch.randperm(n_blocks, generator=gen)
        total, count = 0.0, 0
        for s in range(steps_per_epoch):
            if step >= total_steps:
                break
            opt.zero_grad(set_to_none=True)
            for a in range(grad_accum):
                j = (s * grad_accum + a) * batch_size
                x = blocks[order[j: j + batch_size]].to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                    logits = model(input_ids=x).logits
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                         x[:, 1:].reshape(-1))
                scaler.scale(loss / grad_accum).backward()
                total += loss.item()
                count += 1
            scaler.unscale_(opt)
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        losses.append(total / max(count, 1))
        log.info("epoch done after %d steps (%.0fs): train loss %.4f", step, time.time() - t0, losses[-1])
    bar.close()
    return losses
