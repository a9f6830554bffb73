"""CPU kernel for the exact target rank and ties: one pass over each row of float32 logits.

    rank_i = #{j : z_ij >  z_i,t_i}        ties_i = #{j : z_ij == z_i,t_i} - 1

torch needs two passes and two (P, V) bool temporaries for this (~0.1 s per 1024 x 50k positions on
2 cores); this loop does both counts in one pass, parallel over rows, about 5x faster.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def rank_ties_f32(z, zt, rank, ties):
    """z: (P, V) float32 C-contiguous; zt: (P,) float32 target logits; rank, ties: (P,) int32 outputs."""
    n, v = z.shape
    for i in prange(n):
        t = zt[i]
        g = 0
        e = 0
        row = z[i]
        for j in range(v):
            x = row[j]
            g += x > t
            e += x == t
        rank[i] = g
        ties[i] = e - 1


def rank_ties(z: np.ndarray, zt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rank = np.empty(z.shape[0], np.int32)
    ties = np.empty(z.shape[0], np.int32)
    rank_ties_f32(np.ascontiguousarray(z, dtype=np.float32), np.ascontiguousarray(zt, dtype=np.float32), rank, ties)
    return rank, ties
