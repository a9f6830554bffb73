"""Vocabulary use against Python sets."""

from __future__ import annotations

import pytest
import reference_law as rl

from analysis.vocab_use import plot_vocab_use, vocab_use


def test_vocab_share_matches_sets_and_sorts_by_size():
    stores, *_ = rl.memory_family(0, n=300, vocab=40, k=3, params=[10 ** 7, 10 ** 9, 10 ** 8])
    frame = vocab_use(stores)
    assert frame["n_params"].to_list() == [10 ** 7, 10 ** 8, 10 ** 9]
    by_name = {s.model["name"]: s for s in stores}
    for row in frame.iter_rows(named=True):
        arr = by_name[row["model"]].arrays
        assert row["share"] == pytest.approx(rl.vocab_share(arr))
        assert row["n_predicted_types"] == len(set(arr["topk_ids"][:, 0].tolist()))
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_vocab_use(frame)
    assert ax.get_xscale() == "log"
