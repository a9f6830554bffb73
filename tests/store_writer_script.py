"""Writes a deterministic store slowly, for the SIGKILL-and-resume test: python store_writer_script.py PATH DELAY."""

import sys
import time

import numpy as np

from pipeline.store import StoreWriter
from pipeline.store.synthetic import arrays_from_logprobs, random_distributions, synthetic_attrs

N, V, K, CHUNK, BATCH = 96, 30, 6, 16, 10


def data():
    targets, (lp,) = random_distributions(N, V, np.random.default_rng(7), n_models=1, tie_grid=0.5)
    return arrays_from_logprobs(lp, targets, K, "float16", doc_id=np.arange(N) // 25)


def main(path: str, delay: float) -> None:
    arrays = data()
    w = StoreWriter(path, n_positions=N, top_k=K, n_classes=V, attrs=synthetic_attrs("slow"), setting_hash="s1",
                    chunk_size=CHUNK)
    start = (w.n_done // BATCH) * BATCH  # restart from the batch containing the resume point
    for lo in range(start, N, BATCH):
        w.write(lo, **{k: v[lo:lo + BATCH] for k, v in arrays.items()})
        time.sleep(delay)
    w.close()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
