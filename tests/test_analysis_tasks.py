"""Task fusion (analysis.tasks): multiple choice and LAMBADA's last word, against hand-computed fixtures, the
brute-force reference (tests/reference.py) and the single-model metrics of pipeline.store.tasks.

Property tests (hypothesis): fused option scores equal the reference to 1e-12 and the item counts lie in the
reference's rounding bracket (exactly equal when no item is within 1e-9 of a tie); at w = 1 / w = 0 every metric
equals `task_metrics` of A / B exactly; the multiple-choice optimum is no worse than a much finer grid, its value
is what the sweep gives at the returned w, and each item's right-intervals agree with the reference's margins;
last-word certified counts equal the brute force exactly and contain the truth; chunking changes nothing.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis import (
    HeldoutMismatchError,
    MemoryStore,
    NotATaskStoreError,
    TaskLayoutError,
    TaskMismatchError,
    TaskPair,
    WeightError,
    kernels,
)
from analysis.curves import log_beta_grid
from pipeline.store import IncompatiblePairError, SchemaError, StoreError, open_store
from pipeline.store.synthetic import (
    synthetic_attrs,
    task_attr,
    write_random_task_pair,
    write_store_from_logprobs,
    write_task_store_from_logprobs,
)
from pipeline.store.tasks import task_metrics

SETTINGS = settings(max_examples=int(os.environ.get("ANALYSIS_EXAMPLES", "20")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
GRID = np.linspace(0.0, 1.0, 41)
FINE = np.union1d(np.linspace(0.0, 1.0, 4001), log_beta_grid(401, 1e-8, 1e8))


# ---------------------------------------------------------------------------------------------- fixtures
def _explicit(probs_a, probs_b, item_id, option_id, tables, kind="multiple_choice"):
    """MemoryStores from explicit target probabilities (one position per entry; target id 0, the rest of the
    mass split over 2 other ids; float32, K = V: everything exact)."""
    stores = []
    for probs, name, params in ((probs_a, "A", 10**9), (probs_b, "B", 10**8)):
        p = np.asarray(probs, np.float64)
        full = np.stack([p, (1 - p) / 2, (1 - p) / 2], axis=1)
        arr = ref.arrays_from_logprobs(np.log(full), np.zeros(len(p), np.int32), 3, "float32",
                                       doc_id=item_id)
        arr.update(item_id=np.asarray(item_id, np.int32), option_id=np.asarray(option_id, np.int32))
        attrs = {**synthetic_attrs(name, n_params=params), "task": task_attr(kind, "hand", len(tables["item_label"]))}
        stores.append(MemoryStore(arr, n_classes=3, attrs=attrs,
                                  tables={k: np.asarray(v, np.int32) for k, v in tables.items()}))
    return stores


def _f32(p):
    """A probability as the store holds it: exp of its float32 log."""
    return math.exp(float(np.float32(math.log(p))))


@pytest.fixture(scope="module")
def hand_mc():
    # item 0: label 0 (.6, .2) vs (.3, .505): right iff w > 61/121;  item 1: label 0 (.1, .5) vs (.4, .19): right
    # iff w < 31/61;  item 2: label 1, (.9, .9) vs (.05, .05): always right. All three only on (61/121, 31/61),
    # which lies between the grid points 0.50 and 0.51 of linspace(0, 1, 101).
    pa = [.6, .3, .1, .4, .05, .9]
    pb = [.2, .505, .5, .19, .05, .9]
    tables = {"item_label": [0, 0, 1], "item_n_options": [2, 2, 2], "item_source_index": [0, 1, 2],
              "option_n_chars": [3, 3, 3, 3, 3, 3], "option_n_bytes": [3, 3, 3, 3, 3, 3]}
    sa, sb = _explicit(pa, pb, [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1], tables)
    return TaskPair(sa, sb)


def _root(la, lb, oa, ob):
    """w where w la + (1 - w) lb = w oa + (1 - w) ob (one-token options), from the stored probabilities."""
    la, lb, oa, ob = map(_f32, (la, lb, oa, ob))
    return (ob - lb) / ((la - lb) - (oa - ob))


def test_hand_multiple_choice_flip_weights(hand_mc):
    tp = hand_mc
    assert tp.names == ("A", "B")
    r0, r1 = _root(.6, .2, .3, .505), _root(.1, .5, .4, .19)
    assert r0 == pytest.approx(61 / 121, abs=1e-7) and r1 == pytest.approx(31 / 61, abs=1e-7)
    items, lo, hi = tp.mc_right_intervals("acc")
    got = {int(i): (float(a), float(b)) for i, a, b in zip(items, lo, hi)}
    assert got[0][0] == pytest.approx(r0, abs=1e-12) and got[0][1] == 1.0
    assert got[1][0] == 0.0 and got[1][1] == pytest.approx(r1, abs=1e-12)
    assert got[2] == (0.0, 1.0)
    # the 101-point grid never sees all three right; the optimum does
    assert tp.sweep(np.linspace(0, 1, 101))["n_right"].max() == 2
    opt = tp.optimum()
    acc = opt.metrics["acc"]
    assert acc.value == 1.0 and acc.primary == pytest.approx(2 / 3) and acc.secondary == pytest.approx(2 / 3)
    assert acc.improvement == pytest.approx(50.0)
    assert acc.w_lo == pytest.approx(r0, abs=1e-12) and acc.w_hi == pytest.approx(r1, abs=1e-12)
    beta = math.sqrt(r0 / (1 - r0) * r1 / (1 - r1))  # geometric midpoint in beta of the maximising interval
    assert acc.w == pytest.approx(beta / (1 + beta), rel=1e-12) and acc.alpha == pytest.approx(beta, rel=1e-9)
    assert tp.at(acc.w)["acc"] == 1.0 and tp.at(r0 - 1e-9)["acc"] == tp.at(r1 + 1e-9)["acc"] == pytest.approx(2 / 3)
    assert opt.metrics["acc_norm"].value == 1.0  # equal lengths: the same as ACC
    assert tp.at(1.0)["acc"] == pytest.approx(2 / 3) and tp.at(0.0)["acc"] == pytest.approx(2 / 3)


def test_hand_acc_norm_and_ties():
    # item 0: label 1 = two tokens of .6 (log-prob sum -1.02, 10 chars) vs one token of .5 (-0.69, 1 char):
    # wrong by ACC, right by ACC_norm, at every weight (A = B). item 1: option 1 duplicates the label: a tie, wrong.
    p = [.5, .6, .6, .7, .7]
    tables = {"item_label": [1, 0], "item_n_options": [2, 2], "item_source_index": [0, 1],
              "option_n_chars": [1, 10, 4, 4], "option_n_bytes": [1, 10, 4, 4]}
    tp = TaskPair(*_explicit(p, p, [0, 0, 0, 1, 1], [0, 1, 1, 0, 1], tables), order="given")
    frame = tp.sweep(GRID)
    assert frame["n_right"].to_list() == [0] * GRID.size
    assert frame["n_right_norm"].to_list() == [1] * GRID.size
    assert frame["n_right_bytes"].to_list() == [1] * GRID.size
    items, _, _ = tp.mc_right_intervals("acc_norm")
    assert items.tolist() == [0]  # the tied item is never right


def test_shared_secondary_probability_ties_only_at_w_0():
    # item 0: label (.3, .4) vs (.2, .4): equal under B alone (a tie: wrong at w = 0), right for every w > 0;
    # item 1: option 1 is option 0's tokens permuted (the same scores up to rounding at every w).
    pa, pb = [.3, .2, .5, .6, .7, .7, .6, .5], [.4, .4, .3, .2, .1, .1, .2, .3]
    tables = {"item_label": [0, 0], "item_n_options": [2, 2], "item_source_index": [0, 1],
              "option_n_chars": [2, 2, 3, 3], "option_n_bytes": [2, 2, 3, 3]}
    tp = TaskPair(*_explicit(pa, pb, [0, 0, 1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 0, 1, 1, 1], tables), order="given")
    assert tp.at(0.0)["n_right"] == 0 and tp.at(1e-12)["n_right"] >= 1 and tp.at(1.0)["n_right"] >= 1
    items, lo, hi = tp.mc_right_intervals("acc")
    assert 0 in items.tolist()
    i0 = items.tolist().index(0)
    assert lo[i0] < 1e-15 and hi[i0] == 1.0
    d, lay = tp.data, tp.layout
    visits = np.zeros(2, np.int64)
    kernels.mc_right_intervals(d.a, d.b, lay.offsets, lay.item_first, lay.label, np.ones(4), np.linspace(0, 1, 5),
                               np.arange(2), 10**5, np.zeros((2, 4)), np.zeros((2, 4)), np.zeros(2, np.int64),
                               visits, flag := np.zeros(2, np.int8))
    assert not flag.any() and visits.max() < 10**4  # no blow-up near w = 0 or on the permuted item


def test_hand_last_word_interval_and_ppl():
    # item 0 (two tokens): token 1 right iff .2 + .3w > .6 - .3w (w > 2/3); token 2 right iff .7 - .3w > .2 + .3w
    # (w < 5/6): the word is right on (2/3, 5/6). item 1 (one token): both models right.
    full_a = np.array([[.5, .3, .2], [.4, .5, .1], [.8, .1, .1]])
    full_b = np.array([[.2, .6, .2], [.7, .2, .1], [.6, .3, .1]])
    tables = {"item_label": [0, 0], "item_n_options": [1, 1], "item_source_index": [0, 1],
              "option_n_chars": [5, 3], "option_n_bytes": [5, 3]}
    item_id, option_id = np.array([0, 0, 1]), np.zeros(3, np.int32)
    stores = []
    for full, name, params in ((full_a, "A", 10**9), (full_b, "B", 10**8)):
        arr = ref.arrays_from_logprobs(np.log(full), np.zeros(3, np.int32), 3, "float32", doc_id=item_id)
        arr.update(item_id=item_id.astype(np.int32), option_id=option_id)
        attrs = {**synthetic_attrs(name, n_params=params), "task": task_attr("last_word", "lambada_hand", 2)}
        stores.append(MemoryStore(arr, n_classes=3, attrs=attrs, tables=tables))
    tp = TaskPair(*stores)
    opt = tp.optimum()
    acc = opt.metrics["acc"]
    assert acc.w_lo == pytest.approx(2 / 3, abs=1e-6) and acc.w_hi == pytest.approx(5 / 6, abs=1e-6)
    assert acc.value == 1.0 and acc.primary == 0.5 and acc.secondary == 0.5 and acc.improvement == 100.0
    row = tp.at(0.75)
    assert row["acc_lo"] == row["acc_hi"] == 1.0 and row["n_undetermined"] == 0
    assert tp.at(0.6)["acc"] == 0.5
    x = 0.5 * np.array([.5 + .2, .4 + .7, .8 + .6])  # fused target probabilities at w = 1/2
    word = np.array([np.log(x[0]) + np.log(x[1]), np.log(x[2])])
    half = tp.at(0.5)
    # in log space, at the float32 stores' precision (exp of a sum amplifies the rounding)
    assert -math.log(half["word_ppl"]) == pytest.approx(word.mean(), rel=0, abs=1e-6)
    assert -math.log(half["token_ppl"]) == pytest.approx(word.sum() / 3, rel=0, abs=1e-6)
    # the word-PPL optimum is the token-NLL optimum
    assert opt.metrics["word_ppl"].w == opt.metrics["token_ppl"].w
    assert opt.metrics["word_ppl"].value <= tp.sweep(GRID)["word_ppl"].min() * (1 + 1e-12)


# ---------------------------------------------------------------------------------------------- properties
@st.composite
def task_cases(draw, kind="multiple_choice"):
    vocab = draw(st.integers(3, 16))
    return dict(seed=draw(st.integers(0, 2**31 - 1)), kind=kind, n_items=draw(st.integers(1, 25)),
                k=draw(st.integers(1, vocab)), logprob_dtype=draw(st.sampled_from(["float16", "float32"])),
                vocab=vocab, n_options=(1, draw(st.integers(1, 5))), n_tokens=(1, draw(st.integers(1, 6))),
                tie_grid=draw(st.sampled_from([None, None, 0.5])), sharpness=draw(st.sampled_from([0.5, 2.0, 4.0])))


def _pair(case, **kw):
    sa, sb, t = ref.memory_task_pair(**case, **kw)
    return sa, sb, t, TaskPair(sa, sb, order="given")


def _single(store, kind):
    arr = store.read(["target_logprob", "target_rank", "target_ties", "item_id", "option_id"])
    return task_metrics(kind, arr, {n: store.table(n) for n in store.tables})


@SETTINGS
@given(task_cases())
def test_mc_sweep_matches_reference_and_single_models(case):
    sa, sb, t, tp = _pair(case)
    lay, d = tp.layout, tp.data
    scores = tp.option_scores(GRID)
    want = ref.task_option_scores(d.a, d.b, lay.offsets, GRID)
    assert np.array_equal(np.isneginf(scores), np.isneginf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(scores[fin], want[fin], rtol=1e-12, atol=1e-12)
    frame = tp.sweep(GRID)
    inner = (GRID > 0) & (GRID < 1)
    for metric, col, div in (("acc", "n_right", None), ("acc_norm", "n_right_norm", lay.div[1]),
                             ("acc_bytes", "n_right_bytes", lay.div[2])):
        lo, hi = ref.task_count_bracket(ref.task_margins(want, lay.item_first, lay.label, div))
        got = frame[col].to_numpy()
        assert ((lo <= got) & (got <= hi))[inner].all()
        assert np.array_equal(got[inner & (lo == hi)], lo[inner & (lo == hi)])
        # w = 1 / w = 0: A / B alone, exactly as pipeline.store.tasks.task_metrics
        assert frame[metric][-1] == _single(sa, "multiple_choice")[metric]
        assert frame[metric][0] == _single(sb, "multiple_choice")[metric]


@SETTINGS
@given(task_cases())
def test_mc_optimum_beats_a_much_finer_grid(case):
    _, _, _, tp = _pair(case)
    lay, d = tp.layout, tp.data
    opt = tp.optimum()
    fine = tp.sweep(FINE)
    want = ref.task_option_scores(d.a, d.b, lay.offsets, FINE)
    for metric, col, div in (("acc", "n_right", None), ("acc_norm", "n_right_norm", lay.div[1])):
        o = opt.metrics[metric]
        n_best = o.detail.n_right_lo
        assert fine[col].max() <= n_best
        assert tp.at(o.w)[col] == n_best and o.value == n_best / lay.n_items
        assert o.w_lo <= o.w <= o.w_hi
        for iv in o.intervals:
            mid = 0.5 * (iv.w_lo + iv.w_hi) if iv.w_lo < iv.w_hi else iv.w_lo
            assert tp.at(mid)[col] == n_best
        # each item's right-intervals agree with the reference's margins on the fine grid (interior weights)
        items, lo, hi = tp.mc_right_intervals(metric)
        inside = np.zeros((lay.n_items, FINE.size), bool)
        for i, a, b in zip(items, lo, hi):
            inside[i] |= (a < FINE) & (FINE < b)
        margins = ref.task_margins(want, lay.item_first, lay.label, div)
        inner = (FINE > 0) & (FINE < 1)
        assert not (inner & (margins > 1e-9) & ~inside).any()
        assert not (inner & (margins < -1e-9) & inside).any()


@SETTINGS
@given(task_cases("last_word"))
def test_last_word_matches_reference(case):
    sa, sb, t, tp = _pair(case)
    off = tp.layout.offsets
    frame = tp.sweep(GRID)
    lo, hi = ref.task_lw_certified(sa.arrays, sb.arrays, sa.n_classes, sb.n_classes, off, GRID)
    np.testing.assert_array_equal(frame["n_right_lo"].to_numpy(), lo)
    np.testing.assert_array_equal(frame["n_right_hi"].to_numpy(), hi)
    word, token = ref.task_lw_ppl(sa.arrays, sb.arrays, off, GRID)
    # mean NLLs (log PPL): float64 sums in another order agree to rounding, whatever their size
    np.testing.assert_allclose(np.log(frame["word_ppl"].to_numpy()), np.log(word), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.log(frame["token_ppl"].to_numpy()), np.log(token), rtol=1e-12, atol=1e-12)
    # the truth (full distributions): an item is right iff every token is the strict top-1 of the fusion
    truth = ref.truth_right(*t["logprobs"], t["targets"], GRID, sa.arrays, sb.arrays)
    items = np.array([truth[off[r]:off[r + 1]].all(axis=0) for r in range(len(off) - 1)]).sum(axis=0)
    assert (lo <= items).all() and (items <= hi).all()
    for row, store in ((-1, sa), (0, sb)):
        single = _single(store, "last_word")
        for m in ("word_ppl", "token_ppl", "acc"):
            assert frame[m][row] == single[m]
    # optimum: ACC is the max over every critical weight of the brute force; PPL no worse than the grid
    opt = tp.optimum()
    crit = ref.critical_weights(sa.arrays, sb.arrays, sa.n_classes, sb.n_classes)
    pts = np.concatenate([[0.0, 1.0], crit, (np.concatenate([[0.0], crit]) + np.concatenate([crit, [1.0]])) / 2])
    best = ref.task_lw_certified(sa.arrays, sb.arrays, sa.n_classes, sb.n_classes, off, pts)[0].max()
    assert opt.metrics["acc"].detail.n_right_lo == best and tp.at(opt.metrics["acc"].w)["n_right_lo"] == best
    if np.isfinite(frame["word_ppl"].to_numpy()).all():
        assert opt.metrics["word_ppl"].value <= frame["word_ppl"].min() * (1 + 1e-12)
        assert tp.at(opt.metrics["word_ppl"].w)["word_ppl"] == opt.metrics["word_ppl"].value


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 12), st.floats(0.0, 0.95), st.floats(0.001, 0.05))
def test_cell_sign_is_sound(seed, n_tokens, w0, h):
    """Whenever `cell_sign` certifies a sign of D = s_l - s_o on a cell, D has that sign on a dense sample of it."""
    rng = np.random.default_rng(seed)
    a, b = rng.random(2 * n_tokens) ** 3, rng.random(2 * n_tokens) ** 3
    off = np.array([0, n_tokens, 2 * n_tokens])
    w1 = min(1.0, w0 + h)
    dv = np.ones(2)
    ends = [kernels._score_at(a, b, off, r, w, dv[r]) for w in (w0, w1) for r in (0, 1)]
    (l0, dl0), (o0, do0), (l1, dl1), (o1, do1) = ends
    sign = kernels.cell_sign(w1 - w0, l0, dl0, l1, dl1, o0, do0, o1, do1)
    ws = np.linspace(w0, w1, 513)
    s = ref.task_option_scores(a, b, off, ws)
    dd = s[0] - s[1]
    assert sign in (-1, 0, 1)
    if sign == 1:
        assert (dd > -1e-12).all()
    if sign == -1:
        assert (dd < 1e-12).all()
    if dd[0] * dd[-1] < 0:  # a sign change across the cell is never certified
        assert sign == 0


def test_cell_sign_certifies_clear_cells():
    # one token each: D = log(.2 + .4 w) - log(.5 - .2 w) crosses 0 at w = 1/2
    a, b, off = np.array([.6, .3]), np.array([.2, .5]), np.array([0, 1, 2])

    def sign(w0, w1):
        (l0, dl0), (o0, do0) = (kernels._score_at(a, b, off, r, w0, 1.0) for r in (0, 1))
        (l1, dl1), (o1, do1) = (kernels._score_at(a, b, off, r, w1, 1.0) for r in (0, 1))
        return kernels.cell_sign(w1 - w0, l0, dl0, l1, dl1, o0, do0, o1, do1)

    assert sign(0.6, 0.7) == 1 and sign(0.3, 0.4) == -1 and sign(0.45, 0.55) == 0


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.floats(0.0, 1.0))
def test_scalar_and_grid_scores_are_bit_identical(seed, n, w):
    rng = np.random.default_rng(seed)
    a, b = rng.random(n) ** 4, rng.random(n) ** 4
    a[rng.random(n) < 0.1] = 1e-20  # below SAFE_MIN: the one-log-per-factor branch
    out = np.empty((1, 1))
    kernels.option_scores(a, b, np.array([0, n]), np.array([w]), np.array([1.0 - w]), out)
    assert out[0, 0] == kernels._fused_log_sum(a, b, 0, n, w, 1.0 - w)


# ---------------------------------------------------------------------------------------------- stores
def test_on_disk_chunking_and_heldout(tmp_path):
    test = write_random_task_pair(tmp_path / "s", "multiple_choice", 40, seed=3, split="test", dataset="arc")
    valid = write_random_task_pair(tmp_path / "s", "multiple_choice", 30, seed=4, split="validation", dataset="arc")
    small = write_random_task_pair(tmp_path / "c", "multiple_choice", 40, seed=3, split="test", dataset="arc",
                                   chunk_size=7)
    tp = TaskPair(test[1], test[0])  # larger model first whatever the order given
    assert tp.names == ("task-A", "task-B")
    assert tp.sweep(GRID).equals(TaskPair(*small).sweep(GRID))
    assert tp.optimum().metrics["acc"].w == TaskPair(*small).optimum().metrics["acc"].w
    h = tp.heldout(TaskPair(*valid))
    v = TaskPair(*valid).optimum()
    assert h.weights["acc"] == v.metrics["acc"].w
    assert h.values["acc"] == tp.at(v.metrics["acc"].w)["acc"]
    assert h.values["acc"] <= tp.optimum().metrics["acc"].value
    assert h.row()["heldout_w_acc"] == h.weights["acc"]
    flipped = TaskPair(valid[1], valid[0], order="given")
    assert tp.heldout(flipped).weights["acc"] == 1.0 - flipped.optimum().metrics["acc"].w  # B primary there
    lw = write_random_task_pair(tmp_path / "t", "last_word", 30, seed=5, dataset="arc", split="validation")
    with pytest.raises(HeldoutMismatchError, match="last_word"):
        tp.heldout(TaskPair(*lw))


def test_errors_are_typed(tmp_path):
    mc = write_random_task_pair(tmp_path / "s", "multiple_choice", 20, seed=0, dataset="arc")
    other = write_random_task_pair(tmp_path / "o", "multiple_choice", 20, seed=1, dataset="arc")
    rng = np.random.default_rng(0)
    lp = np.log(rng.dirichlet(np.ones(8), 50))
    lm = write_store_from_logprobs(tmp_path / "lm.zarr", lp, rng.integers(0, 8, 50), 4, dataset="arc").path
    with pytest.raises(NotATaskStoreError, match="not a task store") as e:
        TaskPair(mc[0], lm)
    assert isinstance(e.value, StoreError)
    with pytest.raises(IncompatiblePairError, match="stream_hash"):
        TaskPair(mc[0], other[1])
    # a label outside its item's options: refused by the writer, and by TaskPair on a store that has one
    t = ref.memory_task_pair(0, n_items=5)[2]
    bad = {**t["tables"], "item_label": t["tables"]["item_n_options"].copy()}
    with pytest.raises(SchemaError, match="label"):
        write_task_store_from_logprobs(tmp_path / "bad.zarr", t["logprobs"][0], t["targets"], t["item_id"],
                                       t["option_id"], bad, "multiple_choice", 4)
    sa, sb, _ = ref.memory_task_pair(0, n_items=5)
    broken = MemoryStore(sa.arrays, n_classes=sa.n_classes, attrs=sa.attrs, tables=bad)
    with pytest.raises(TaskLayoutError, match="label") as e:
        _ = TaskPair(broken, sb).sweep(GRID)
    assert isinstance(e.value, SchemaError)
    lw_attrs = {**sb.attrs, "task": {**sb.attrs["task"], "kind": "last_word"}}
    with pytest.raises(TaskMismatchError, match="task.kind"):
        TaskPair(sa, MemoryStore(sb.arrays, n_classes=sb.n_classes, attrs=lw_attrs, tables=t["tables"]))
    shifted = dict(sb.arrays, option_id=np.roll(sb.arrays["option_id"], 1))
    with pytest.raises(TaskMismatchError, match="option_id"):
        _ = TaskPair(sa, MemoryStore(shifted, n_classes=sb.n_classes, attrs=sb.attrs, tables=t["tables"])).layout
    with pytest.raises(WeightError, match="1.5"):
        TaskPair(sa, sb).sweep([0.5, 1.5])
    assert open_store(mc[0]).attrs["task"]["kind"] == "multiple_choice"
