"""The Dask engine (analysis.engines.dask) gives the in-memory engine's results bit for bit.

Stores of ~20k positions in chunks of 1,000 (so a task is several chunks and several 4,096-position blocks, and the
last group is partial); pairs whose ACC optimum is interior, at w = 1, or has several maximising intervals; float16
and float32 lists with exact ties. Every comparison is exact (frames with check_exact, optima with ==).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from polars.testing import assert_frame_equal

pytest.importorskip("dask")

from analysis import MemoryStore, Pair  # noqa: E402
from analysis.engines import EngineNotSupportedError  # noqa: E402
from analysis.engines.dask import DaskEngine, bin_edges, chunk_groups  # noqa: E402
from analysis.errors import DegenerateObjectiveError, SettingsError  # noqa: E402
from pipeline.store.synthetic import (  # noqa: E402
    arrays_from_logprobs,
    random_distributions,
    write_store_from_logprobs,
    write_zipf_pair,
)

W = np.union1d(np.linspace(0.0, 1.0, 41), [1e-9, 0.3333, 1 - 1e-9])
FIELDS = ("w_nll", "alpha_nll", "w_d_nll", "d_nll", "w_acc", "alpha_acc", "acc_intervals", "w_d_acc", "d_acc",
          "d_acc_disconnected", "at_nll", "at_acc", "primary", "secondary", "improvement", "nll_detail", "acc_detail")


def _same_optimum(o1, o2):
    for f in FIELDS:
        a, b = getattr(o1, f), getattr(o2, f)
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), (f, a, b)


def _random_pair(root, seed, n, vocab, k, dtype="float16", noise=(0.6, 1.4), tie_grid=None, chunk=1000):
    rng = np.random.default_rng(seed)
    targets, (la, lb) = random_distributions(n, vocab, rng, noise=noise, tie_grid=tie_grid)
    doc = (np.arange(n) // 500).astype(np.int32)
    pa = write_store_from_logprobs(root / "A.zarr", la, targets, k, dtype, model="A", n_params=2_000_000,
                                   doc_id=doc, chunk_size=chunk)
    pb = write_store_from_logprobs(root / "B.zarr", lb, targets, k, dtype, model="B", n_params=1_000_000,
                                   doc_id=doc, chunk_size=chunk)
    return pa.path, pb.path


SPECS = {"f16": dict(seed=1, n=8_000, vocab=30, k=5),
         "f32ties": dict(seed=2, n=6_000, vocab=12, k=4, dtype="float32", tie_grid=0.5),
         "close": dict(seed=3, n=10_000, vocab=25, k=6, noise=(1.0, 1.05))}


class _Pairs(dict):
    """Store pairs written on first use (fast tests build only what they read)."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name):
        if name == "zipf":
            self[name] = write_zipf_pair(self.root / "zipf", 20_000, k=8, vocab=400, chunk_size=1000)
        else:
            (self.root / name).mkdir()
            self[name] = _random_pair(self.root / name, **SPECS[name])
        return self[name]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return _Pairs(tmp_path_factory.mktemp("dask"))


@pytest.mark.parametrize("name", ["f16", "f32ties", pytest.param("zipf", marks=pytest.mark.slow),
                                  pytest.param("close", marks=pytest.mark.slow)])
def test_sweep_optimum_partitions_identical(pairs, name):
    pa, pb = pairs[name]
    local, dask_ = Pair(pa, pb), Pair(pa, pb, engine="dask", group=8192)
    assert_frame_equal(local.sweep(W), dask_.sweep(W), check_exact=True)
    assert_frame_equal(local.sweep(betas=[0.0, 0.5, 2.0, np.inf]), dask_.sweep(betas=[0.0, 0.5, 2.0, np.inf]),
                       check_exact=True)
    _same_optimum(local.optimum(), dask_.optimum())
    p1, p2 = local.partitions(), dask_.partitions()
    assert p1.counts == p2.counts
    assert_frame_equal(p1.positions, p2.positions, check_exact=True)


@pytest.mark.slow
def test_interior_acc_optimum_is_exercised(pairs):
    """At least one fixture pair has an interior ACC optimum and a finite D_acc (so the binned search is tested)."""
    alphas = [Pair(*pairs[n]).optimum() for n in ("f16", "close", "f32ties")]
    assert any(0 < o.alpha_acc < math.inf for o in alphas)
    assert any(len(o.acc_intervals) > 1 or o.d_acc_disconnected or 0 < o.d_acc < math.inf for o in alphas)


@pytest.mark.parametrize("bins", [2, pytest.param(7, marks=pytest.mark.slow), 64])
def test_acc_optimum_any_binning(pairs, bins):
    """Coarse bins (most of the end points gathered) and fine ones give the same exact optimum."""
    pa, pb = pairs["f16"]
    d = Pair(pa, pb, engine="dask", bins=bins)
    assert isinstance(d._engine, DaskEngine) and d._engine.edges.size <= bins + 1
    _same_optimum(Pair(pa, pb).optimum(), d.optimum())


def test_memory_stores():
    """MemoryStore pairs (the objects travel in the graph) on the threaded scheduler."""
    rng = np.random.default_rng(5)
    targets, (la, lb) = random_distributions(6000, 20, rng, noise=(0.7, 1.2))
    sa = MemoryStore(arrays_from_logprobs(la, targets, 5), n_classes=20, attrs={"model": {"name": "A"}},
                     chunk_size=1000)
    sb = MemoryStore(arrays_from_logprobs(lb, targets, 5), n_classes=20, attrs={"model": {"name": "B"}},
                     chunk_size=1000)
    local, dk = Pair(sa, sb, order="given"), Pair(sa, sb, order="given", engine="dask", workers=2)
    assert_frame_equal(local.sweep(W), dk.sweep(W), check_exact=True)
    assert local.at(0.4) == dk.at(0.4)
    _same_optimum(local.optimum(), dk.optimum())


@pytest.mark.slow
def test_heldout_identical(pairs):
    pa, pb = pairs["f16"]
    va, vb = pairs["close"]  # another "split" of models A and B
    h1 = Pair(pa, pb).heldout(Pair(va, vb))
    h2 = Pair(pa, pb, engine="dask").heldout(Pair(va, vb, engine="dask"))
    assert (h1.w_nll, h1.w_acc, h1.at_nll, h1.at_acc, h1.improvement) == \
        (h2.w_nll, h2.w_acc, h2.at_nll, h2.at_acc, h2.improvement)


def test_in_memory_only_analyses_raise_typed_errors(pairs):
    from analysis import bootstrap

    pair = Pair(*pairs["f16"], engine="dask")
    with pytest.raises(EngineNotSupportedError, match="engine='local'"):
        _ = pair.data
    with pytest.raises(EngineNotSupportedError):
        bootstrap(pair, n_resamples=10)
    with pytest.raises(SettingsError, match="not one of"):
        Pair(*pairs["f16"], engine="spark")


def test_degenerate_objective_is_the_same_error():
    arrs = [{"targets": np.array([0, 1], np.int32), "target_logprob": np.array([-np.inf, -1.0], np.float32),
             "target_rank": np.array([2, 0], np.int32), "target_ties": np.zeros(2, np.int32),
             "topk_ids": np.array([[1, 2], [1, 0]], np.int32),
             "topk_logprobs": np.array([[-0.5, -1.0], [-1.0, -2.0]], np.float16),
             "tail_logmass": np.array([-np.inf, -1.0], np.float32), "doc_id": np.zeros(2, np.int32),
             "n_chars": np.ones(2, np.int32), "n_bytes": np.ones(2, np.int32)} for _ in range(2)]
    pair = Pair(MemoryStore(arrs[0], n_classes=3), MemoryStore(arrs[1], n_classes=3), order="given", engine="dask")
    with pytest.raises(DegenerateObjectiveError, match="position 0"):
        pair.optimum()


def test_chunk_groups_align_to_blocks():
    for n, cs, g in [(20_000, 1000, None), (20_000, 1000, 9000), (1_000_000, 65_536, None), (5, 3, None),
                     (100_000, 4096, 3 * 4096), (300_000, 6000, 50_000)]:
        rng = chunk_groups(n, cs, g)
        assert rng[0][0] == 0 and rng[-1][1] == n
        assert all(lo % 4096 == 0 and hi == nxt for (lo, hi), (nxt, _) in zip(rng, rng[1:]))
    assert chunk_groups(1_000_000, 65_536)[0] == (0, 65_536)  # whole chunks where the chunking allows
    e = bin_edges(64)
    assert e[0] == 0.0 and e[-1] == 1.0 and np.all(np.diff(e) > 0)


def test_numba_threads_limited_per_task(pairs):
    import dask

    from analysis.engines.dask import _limit_threads

    def probe(_):
        _limit_threads(1)
        import numba

        return numba.get_num_threads()

    got = dask.compute(*[dask.delayed(probe)(i) for i in range(4)], scheduler="threads", num_workers=2)
    assert set(got) == {1}


@pytest.mark.slow
def test_family_in_one_graph(pairs):
    """prefetch: every pair's sweep in one graph, then the optima together; results equal the local engine's."""
    from analysis.engines.dask import prefetch

    pa, pb = pairs["f16"]
    qa, qb = pairs["close"]
    dk = [Pair(pa, pb, engine="dask"), Pair(qa, qb, engine="dask")]
    prefetch(dk, W)
    assert all(p._optima is not None for p in dk)
    for p, (a, b) in zip(dk, [(pa, pb), (qa, qb)]):
        waves = p._engine.waves
        local = Pair(a, b)
        assert_frame_equal(local.sweep(W), p.sweep(W), check_exact=True)
        _same_optimum(local.optimum(), p.optimum())
        assert p._engine.waves == waves  # served from what prefetch computed


@pytest.mark.slow
def test_local_cluster_two_processes(pairs):
    from analysis.engines.dask import connect

    client = connect(cluster="local", n_workers=2, threads_per_worker=1, memory_limit="1GB")
    try:
        pa, pb = pairs["zipf"]
        local, dk = Pair(pa, pb), Pair(pa, pb, engine="dask", client=client)
        assert_frame_equal(local.sweep(W), dk.sweep(W), check_exact=True)
        _same_optimum(local.optimum(), dk.optimum())
        threads = client.run(lambda: __import__("numba").config.NUMBA_NUM_THREADS)
        assert set(threads.values()) == {1}
    finally:
        client.close()
        client.cluster.close()


@pytest.mark.parametrize("address", [None, "tcp://scheduler:8786"])
def test_cli_engine_closes_the_cluster_it_started(tmp_path, monkeypatch, address):
    """The sweep and law CLIs share `analysis.sweep.engine`: a cluster the run started is closed when the run
    ends, also when it raises; a scheduler given by address is the user's and is left running."""
    import analysis.engines.dask as dask_engine
    from analysis.sweep import AnalyzeSettings, engine

    closed = []

    class Cluster:
        def close(self):
            closed.append("cluster")

    class Client:
        def __init__(self, cluster):
            self.cluster = cluster

        def close(self):
            closed.append("client")

    monkeypatch.setattr(dask_engine, "connect",
                        lambda address=None, **kw: Client(None if address else Cluster()))
    cfg = AnalyzeSettings(stores=tmp_path, out_dir=tmp_path, engine="dask",
                          dask={"cluster": "local", "address": address, "n_workers": 2})
    with pytest.raises(RuntimeError, match="boom"):
        with engine(cfg) as pair_cls:
            assert pair_cls.keywords["engine"] == "dask" and isinstance(pair_cls.keywords["client"], Client)
            raise RuntimeError("boom")
    assert closed == (["client"] if address else ["client", "cluster"])
