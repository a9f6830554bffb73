"""One GPU per job on a multi-GPU machine (the `local_gpus` launcher preset: Hydra's joblib launcher).

Joblib runs the sweep's jobs in worker processes; each job, before its model loads, claims a free GPU slot: an
OS lock (flock, released by the kernel if the process dies) on a file per GPU in the machine's temp directory,
trying first the GPU ``hydra.job.num`` modulo the number of GPUs. The job then makes that GPU its current CUDA
device (``torch.cuda.set_device``), so ``model.device=auto`` (or ``cuda``) places it there and the recorded
device stays ``cuda`` (a store resumed on another GPU keeps its setting). With more workers than GPUs, a job
waits for a slot to free up, so a GPU never runs two jobs; two sweeps on one machine share the slots too.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def slot_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"arcache-gpu-slots-{os.getuid()}"


class GpuSlot:
    """An exclusive claim on one of ``n_devices`` GPUs of this machine (see the module docstring)."""

    def __init__(self, n_devices: int, directory: Path | None = None):
        self.n = int(n_devices)
        self.dir = Path(directory) if directory is not None else slot_dir()
        self.index: int | None = None
        self._fd: int | None = None

    def _name(self, g: int) -> str:
        # the physical GPU (CUDA_VISIBLE_DEVICES may renumber them), so that sweeps with other masks agree
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        return f"gpu-{visible[g] if g < len(visible) else g}.lock"

    def try_acquire(self, first: int = 0) -> int | None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for k in range(self.n):
            g = (first + k) % self.n
            fd = os.open(self.dir / self._name(g), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd, self.index = fd, g
            return g
        return None

    def acquire(self, first: int = 0, timeout_s: float | None = None, poll_s: float = 1.0) -> int:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        waited = False
        while True:
            g = self.try_acquire(first)
            if g is not None:
                return g
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no free GPU among {self.n} within {timeout_s} s")
            if not waited:
                log.info("all %d GPUs are busy with other jobs; waiting for one", self.n)
                waited = True
            time.sleep(poll_s)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd, self.index = None, None


def hydra_job() -> tuple[str, int] | None:
    """(launcher target, job number) when running as a Hydra job; None otherwise."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        return str(hc.launcher.get("_target_", "")), int(hc.job.get("num") or 0)
    except Exception:  # noqa: BLE001  not under Hydra, or a Hydra without these fields: no placement
        return None


def on_own_gpu(extract):
    """Decorate ``extract(spec, lm=None)``: a job of a joblib multirun on a machine with several GPUs runs on
    a GPU of its own (model.device auto or cuda; an explicit cuda:N is left alone)."""

    @functools.wraps(extract)
    def wrapper(spec, lm=None, *args, **kwargs):
        job = hydra_job() if lm is None and spec.model.device in ("auto", "cuda") else None
        if job is None or "joblib" not in job[0].lower():
            return extract(spec, lm, *args, **kwargs)
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < 2:
            return extract(spec, lm, *args, **kwargs)
        slot = GpuSlot(n)
        g = slot.acquire(first=job[1] % n)
        try:
            torch.cuda.set_device(g)
            log.info("job %d runs on GPU %d of %d", job[1], g, n)
            return extract(spec, lm, *args, **kwargs)
        finally:
            torch.cuda.empty_cache()  # the next job of this worker may run on another GPU
            slot.release()

    return wrapper
