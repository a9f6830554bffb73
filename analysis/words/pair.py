"""`WordPair`: fusion of two stores of one text at the level of words (DESIGN.md section 7).

    import analysis
    wp = analysis.WordPair("stores/.../gpt2.zarr", "stores/.../smollm2.zarr")   # any two tokenizers
    wp.sweep(numpy.linspace(0, 1, 101))   # polars: w, beta, nll (total nats), bpb, bpc, word_ppl, n_segments
    wp.optimum()                          # exact w_nll, alpha_nll, d_nll (the NLL is convex in w)
    wp.heldout(valid_wordpair)            # the weight chosen on another split, applied here
    wp.bootstrap()                        # intervals by document

Each model's probability of every word segment comes from its own cache (`segments.store_segments`); the fusion
is w pA(s) + (1 - w) pB(s), a proper mixture whatever the tokenizers. With one tokenizer it is a coarser model
than the token-level mixture of `analysis.Pair`: both are reported, never one for the other. No accuracy: the
most probable next word is not in a top-K cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from pipeline.store import align

from ..errors import AnalysisError, HeldoutMismatchError, SegmentMismatchError, WeightError
from ..metrics import LN2, betas_to_weights, check_weights, weight_to_beta
from ..optimum import NllOptimum, solve_nll
from ..pair import TwoStores, _as_store, _name, _row, heldout_flip, order_stores
from .segments import SAME_TEXT, WordData, check_word_store

WORD_METRICS = ("nll", "word_ppl", "bpc", "bpb")  # lower is better


def word_frame(data: WordData, weights) -> pl.DataFrame:
    """Word-level fused metrics at each weight (in the order given): nll (total nats over the segments, = nll_sum),
    bpb = nll / ln 2 / bytes, bpc likewise with characters, word_ppl = exp(nll / n_segments)."""
    w = check_weights(weights)
    s = data.nll_sums(w)
    n = data.n
    nbytes, chars = int(data.n_bytes.sum()), int(data.n_chars.sum())
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return pl.DataFrame({
            "w": w, "beta": weight_to_beta(w), "nll": s, "nll_sum": s,
            "bpb": s / LN2 / nbytes if nbytes else np.full(w.size, np.nan),
            "bpc": s / LN2 / chars if chars else np.full(w.size, np.nan),
            "word_ppl": np.exp(s / n), "n_segments": np.full(w.size, n, np.int64),
            "n_bytes": np.full(w.size, nbytes, np.int64), "n_chars": np.full(w.size, chars, np.int64),
        })


def word_improvement(fused: dict, a: dict, b: dict) -> dict:
    """Relative improvement (%) of the fusion over the best single model, per word-level metric."""
    out = {}
    for m in WORD_METRICS:
        best = min(a[m], b[m])
        out[m] = (best - fused[m]) / best * 100.0 if best and math.isfinite(best) else math.nan
    return out


@dataclass(frozen=True)
class WordOptimum:
    """Exact NLL optimum of a word pair. w in [0, 1], beta = alpha = w / (1 - w) (inf: A alone)."""

    w_nll: float
    alpha_nll: float
    w_d_nll: float  # fused NLL <= A's exactly on [w_d_nll, 1]
    d_nll: float  # the same in beta: [d_nll, inf)
    at_nll: dict  # word_frame row at w_nll
    primary: dict  # A alone (w = 1)
    secondary: dict  # B alone (w = 0)
    improvement: dict  # relative improvement (%) at w_nll: nll, word_ppl, bpc, bpb
    nll_detail: NllOptimum = field(repr=False, default=None)

    @property
    def d_nll_domain(self) -> tuple[float, float]:
        return (self.d_nll, math.inf)


@dataclass(frozen=True)
class WordHeldout:
    """The weight chosen on another split's word pair, and what it gives on this one."""

    w_nll: float
    alpha_nll: float
    at_nll: dict
    improvement: dict
    in_sample: WordOptimum


class WordPair(TwoStores):
    """Two stores of one text (same or different tokenizers) fused word by word: primary A, secondary B."""

    def __init__(self, primary, secondary, *, order: str = "auto"):
        a, b = order_stores(_as_store(primary), _as_store(secondary), order)
        for s in (a, b):
            check_word_store(s)
        for f, get in SAME_TEXT:
            if get(a) != get(b):
                raise SegmentMismatchError(f"{a.path} and {b.path} are not of the same text: {f} is {get(a)!r} vs "
                                           f"{get(b)!r}; fuse stores of one dataset split and protocol",
                                           field=f, value_a=get(a), value_b=get(b))
        self.primary, self.secondary = a, b
        self.flags = [f for f in align(a, b).flagged]
        self.same_tokenizer = (a.attrs.get("tokenizer", {}).get("vocab_hash")
                               == b.attrs.get("tokenizer", {}).get("vocab_hash"))
        self.data = WordData.load(a, b)
        self._optimum: WordOptimum | None = None

    def __repr__(self) -> str:
        return (f"WordPair(A={_name(self.primary)!r}, B={_name(self.secondary)!r}, segments={self.data.n}"
                f"{', one tokenizer' if self.same_tokenizer else ''})")

    @property
    def dropped(self) -> dict:
        """What each store left out (documents without BOS lose their first words): positions, bytes, chars,
        segments per store ('a', 'b'); the bytes agree."""
        return self.data.dropped

    def sweep(self, weights=None, *, betas=None) -> pl.DataFrame:
        """Word-level fused metrics at each weight (or each beta); see `word_frame`."""
        if (weights is None) == (betas is None):
            raise WeightError("give exactly one of weights=... (w in [0, 1]) or betas=... (beta in [0, inf])")
        return word_frame(self.data, betas_to_weights(betas) if betas is not None else weights)

    def at(self, w: float) -> dict:
        return _row(word_frame(self.data, [w]), 0)

    def optimum(self) -> WordOptimum:
        if self._optimum is None:
            nll = solve_nll(self.data.problem())
            frame = word_frame(self.data, [nll.w, 1.0, 0.0])
            at_nll, pa, pb = (_row(frame, i) for i in range(3))
            self._optimum = WordOptimum(nll.w, nll.alpha, nll.w_domain, nll.d, at_nll, pa, pb,
                                        word_improvement(at_nll, pa, pb), nll)
        return self._optimum

    def heldout(self, valid_pair: WordPair) -> WordHeldout:
        """Choose the weight on ``valid_pair`` (same two models, another split) and apply it here."""
        if not isinstance(valid_pair, WordPair):
            raise HeldoutMismatchError(f"heldout needs a WordPair of validation stores; got "
                                       f"{type(valid_pair).__name__}")
        flip = heldout_flip(self.names, valid_pair.names)
        v = valid_pair.optimum()
        w = 1.0 - v.w_nll if flip else v.w_nll
        ins = self.optimum()
        at = self.at(w)
        return WordHeldout(w, math.inf if w >= 1.0 else w / (1.0 - w), at,
                           word_improvement(at, ins.primary, ins.secondary), ins)

    def bootstrap(self, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95, heldout_w=None,
                  min_units: int | None = None) -> pl.DataFrame:
        """Percentile intervals by document (`words.bootstrap.word_bootstrap`)."""
        from .bootstrap import word_bootstrap

        kw = {} if min_units is None else {"min_units": min_units}
        return word_bootstrap(self.data, n_resamples=n_resamples, seed=seed, level=level, heldout_w=heldout_w,
                              optimum=self.optimum().nll_detail, **kw)


def word_pairs(stores, order: str = "auto"):
    """Every pair of different models among stores of one text: (a, b, WordPair or None, error or None)."""
    import itertools

    from pipeline.store import StoreError

    for a, b in itertools.combinations(stores, 2):
        if _name(a) == _name(b):
            continue
        try:
            yield a, b, WordPair(a, b, order=order), None
        except (StoreError, AnalysisError) as e:
            yield a, b, None, e
