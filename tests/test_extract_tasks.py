"""Task stores (issue 5): LAMBADA's last word, CBT-CN/NE and ARC-Easy/Challenge.

Loaders read every supported format of the hand-written fixtures (tests/fixtures/tasks/) to the same items;
the task stream scores exactly the continuation tokens (lm-evaluation-harness's _encode_pair); an extraction
with a tiny random-init GPT-2 through the real dataset configs matches a brute-force forward of
[BOS] + ctx + continuation for every (item, option), and so do the single-model metrics; bad items are
errors or skipped and counted."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from extract_helpers import make_model
from hydra import compose, initialize_config_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from pipeline.extraction.config import DatasetSpec, ModelSpec, RunSpec, run_spec_from_dict
from pipeline.extraction.errors import ConfigError, EmptyDatasetError, TaskDataError
from pipeline.extraction.models import load_model
from pipeline.extraction.run import extract, resolve_protocol
from pipeline.extraction.stream import Protocol, make_windows
from pipeline.extraction.tasks import TaskData, TaskItem, build_task_stream, load_task, split_pair
from pipeline.store import open_store, verify_store
from pipeline.store.tasks import option_offsets

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FIX = Path(__file__).resolve().parent / "fixtures" / "tasks"
L = 56  # every fixture continuation fits one window of the tiny model (64 positions)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("tasks") / "gpt2", "gpt2", max_len=64)


@pytest.fixture(scope="module")
def lm(gpt2):
    return load_model(ModelSpec(name="gpt2", name_or_path=str(gpt2), device="cpu"))


def spec(model_dir, tmp, *overrides) -> RunSpec:
    """A RunSpec composed from the real configs, as the CLI builds it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("extract", overrides=[f"model.name_or_path={model_dir}", "model.device=cpu",
                                            f"paths.stores={tmp}", f"extract.context_length={L}",
                                            "extract.top_k=8", "extract.progress=false", *overrides])
    return run_spec_from_dict(OmegaConf.to_container(cfg, resolve=True))


def dspec(loader, path, protocol=None, **kw) -> DatasetSpec:
    return DatasetSpec(name=kw.pop("name", loader), split="test", loader=loader, path=str(path),
                       files={"test": "x"}, task_protocol=protocol, **kw)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


# ---------------------------------------------------------------- loaders


def test_lambada_reads_jsonl_json_and_parquet_to_the_same_items(tmp_path):
    src = FIX / "lambada_openai" / "lambada_test.jsonl"
    texts = [r["text"] for r in rows(src)]
    (tmp_path / "t.json").write_text(json.dumps([{"text": t} for t in texts]), encoding="utf-8")
    pl.DataFrame({"text": texts}).write_parquet(tmp_path / "t.parquet")
    got = [load_task(dspec("lambada_last_word", p)) for p in (src, tmp_path / "t.json", tmp_path / "t.parquet")]
    assert got[0].items == got[1].items == got[2].items
    assert len({g.meta["text_sha256"] for g in got}) == 1
    first = got[0].items[0]  # as lm-evaluation-harness's lambada_openai
    assert first.context == "The fox ran into the woods and hid under a log. The dog looked everywhere, but it could not find the"
    assert first.continuations == (" fox",) and first.options == ("fox",) and first.label == 0
    last = got[0].items[3]
    assert last.continuations == (" coffee",) and last.context.endswith("went home to make")


def test_cbt_reads_the_release_text_jsonl_and_parquet_to_the_same_items(tmp_path):
    recs = rows(FIX / "cbt" / "CN" / "test.jsonl")
    pl.DataFrame(recs).write_parquet(tmp_path / "test-00000-of-00001.parquet")
    paths = (FIX / "cbt" / "cbtest_CN_test_2500ex.txt", FIX / "cbt" / "CN" / "test.jsonl",
             tmp_path / "test-00000-of-00001.parquet")
    for protocol in ("gpt2", "whole_query"):
        got = [load_task(dspec("cbt", p, protocol)) for p in paths]
        assert got[0].items == got[1].items == got[2].items
        assert len({g.meta["text_sha256"] for g in got}) == 1
    # the release text parsed by hand: 20 numbered sentences, then "21 query<TAB>answer<TAB><TAB>c1|...|c10"
    gpt2, whole = load_task(dspec("cbt", paths[0], "gpt2")), load_task(dspec("cbt", paths[0], "whole_query"))
    assert gpt2.meta["text_sha256"] == whole.meta["text_sha256"]  # the items' hash does not depend on the protocol
    a, b = gpt2.items[0], whole.items[0]
    passage = "Tom had a red ball . He liked to play in the garden ."
    assert a.context.startswith(passage) and a.context.endswith("He ran to the house . Tom put the ")
    assert a.continuations[0] == a.options[0] == "ball in the box by the door ." and a.label == 0
    assert a.options[9] == "door in the box by the door ." and len(a.options) == 10
    assert b.context.startswith(passage) and b.context.endswith("He ran to the house .")
    assert b.continuations[1] == " Tom put the cat in the box by the door ." and b.options[1] == b.continuations[1][1:]
    assert gpt2.items[1].label == 0 and gpt2.items[1].context.endswith("Max ate it at once . `` Give me another ")
    assert gpt2.items[1].options[2] == "cake , '' said Max with his eyes ."


def test_arc_reads_the_hub_layout_release_jsonl_and_parquet_to_the_same_items(tmp_path):
    hub = rows(FIX / "arc" / "ARC-Easy" / "test.jsonl")
    pl.DataFrame(hub).write_parquet(tmp_path / "test-00000-of-00001.parquet")  # choices: struct of two lists, as the hub
    paths = (FIX / "arc" / "ARC-Easy" / "test.jsonl", FIX / "arc" / "ARC-Easy-Test.jsonl",
             tmp_path / "test-00000-of-00001.parquet")
    got = [load_task(dspec("arc", p)) for p in paths]
    assert got[0].items == got[1].items == got[2].items
    assert len({g.meta["text_sha256"] for g in got}) == 1
    first, second, third = got[0].items
    assert first.context == "Question: Which animal hoots at night?\nAnswer:"
    assert first.continuations == (" an owl", " a zebra", " a fox", " a dog") and first.label == 0
    assert second.label == 1  # answerKey "2" among labels "1".."4"
    assert third.options == ("in a café", "in a river", "under a log")


def test_a_dataset_path_directory_finds_the_hub_or_the_release_file(tmp_path):
    for name, path, n in (("lambada_openai", FIX / "lambada_openai", 4), ("cbt_cn", FIX / "cbt", 2),
                          ("arc_easy", FIX / "arc", 3)):
        s = spec("/unused", tmp_path, f"dataset={name}", f"dataset.path={path}")
        task = load_task(s.dataset)
        assert len(task.items) == n and task.meta["source"] == f"file:{path}"
    hub = tmp_path / "hub" / "ARC-Easy"
    hub.mkdir(parents=True)
    pl.DataFrame(rows(FIX / "arc" / "ARC-Easy" / "test.jsonl")).write_parquet(hub / "test-00000-of-00001.parquet")
    s = spec("/unused", tmp_path, "dataset=arc_easy", f"dataset.path={tmp_path / 'hub'}")
    assert load_task(s.dataset).meta["files"] == ["test-00000-of-00001.parquet"]


def test_a_pinned_sha256_is_enforced_and_a_cap_skips_it(tmp_path):
    from pipeline.extraction.errors import DatasetChecksumError

    path = FIX / "arc" / "ARC-Easy" / "test.jsonl"
    digest = load_task(dspec("arc", path)).meta["text_sha256"]
    assert load_task(dspec("arc", path, text_sha256={"test": digest})).meta["text_sha256"] == digest
    with pytest.raises(DatasetChecksumError, match="sha256"):
        load_task(dspec("arc", path, text_sha256={"test": "0" * 64}))
    capped = load_task(dspec("arc", path, text_sha256={"test": "0" * 64}, n_documents=2))
    assert len(capped.items) == 2 and capped.n_source_items == 2


# ---------------------------------------------------------------- bad items


def test_a_label_not_among_the_options_is_a_typed_error_naming_the_item(tmp_path):
    recs = rows(FIX / "cbt" / "CN" / "test.jsonl")
    recs[1]["answer"] = "zebra"
    with pytest.raises(TaskDataError, match=r"source index 1.*'zebra' is not among its options"):
        load_task(dspec("cbt", write_jsonl(tmp_path / "cbt.jsonl", recs), "gpt2"))
    arc = rows(FIX / "arc" / "ARC-Easy" / "test.jsonl")
    arc[2]["answerKey"] = "E"
    with pytest.raises(TaskDataError, match=r"source index 2, id 'Fixture_3'.*answerKey 'E'.*dataset.path"):
        load_task(dspec("arc", write_jsonl(tmp_path / "arc.jsonl", arc)))
    recs[1]["answer"], recs[1]["question"] = "apple", "no blank here ."
    with pytest.raises(TaskDataError, match="0 blanks"):
        load_task(dspec("cbt", write_jsonl(tmp_path / "cbt2.jsonl", recs), "whole_query"))


def test_passages_without_a_last_word_and_empty_options_are_skipped_and_counted(tmp_path):
    bad = ["oneword", "ends with a space ", " startswithspace", "", "A fine passage with a last word"]
    task = load_task(dspec("lambada_last_word", write_jsonl(tmp_path / "l.jsonl", [{"text": t} for t in bad])))
    assert task.skipped == {"no_last_word": [0, 1, 2, 3]} and [it.source_index for it in task.items] == [4]
    arc = rows(FIX / "arc" / "ARC-Easy" / "test.jsonl")
    arc[0]["choices"]["text"][2] = "  "
    task = load_task(dspec("arc", write_jsonl(tmp_path / "a.jsonl", arc)))
    assert task.skipped == {"empty_option": [0]} and [it.source_index for it in task.items] == [1, 2]


def test_options_that_tokenise_to_nothing_and_empty_contexts_are_skipped_at_tokenisation(lm):
    items = [TaskItem(0, "A context", (" yes", ""), ("yes", ""), 0),     # an option with no token
             TaskItem(1, "", (" yes", " no"), ("yes", "no"), 1),          # no context: fine with BOS only
             TaskItem(2, "Another context", (" yes", " no"), ("yes", "no"), 0)]
    task = TaskData("t", "multiple_choice", "p", ("acc",), items, 5, {"empty_option": [3], "other": [4]}, {})
    with_bos = build_task_stream(task, lm.tokenizer, Protocol(context_length=L, stride=L), lm.bos_id)
    assert with_bos.attrs["skipped"] == {"empty_option": 2, "other": 1}
    assert with_bos.attrs["skipped_source_index"] == {"empty_option": [0, 3], "other": [4]}
    np.testing.assert_array_equal(with_bos.tables["item_source_index"], [1, 2])
    no_bos = build_task_stream(task, lm.tokenizer, Protocol(bos="none", context_length=L, stride=L), None)
    assert no_bos.attrs["skipped_source_index"] == {"empty_context": [1], "empty_option": [0, 3], "other": [4]}
    assert no_bos.attrs["n_items"] == 1 and no_bos.attrs["n_source_items"] == 5
    only_bad = TaskData("t", "multiple_choice", "p", ("acc",), items[:1], 1, {}, {})
    with pytest.raises(EmptyDatasetError, match="every item"):
        build_task_stream(only_bad, lm.tokenizer, Protocol(context_length=L, stride=L), lm.bos_id)


def test_all_items_skipped_is_an_empty_dataset_error(gpt2, lm, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "nolastword"}, {"text": "trailing "}])
    s = spec(gpt2, tmp_path, "dataset=lambada_openai", f"dataset.path={path}")
    with pytest.raises(EmptyDatasetError, match=r"every item.*no_last_word"):
        extract(s, lm)


def test_max_positions_would_cut_an_item_and_is_refused(gpt2, lm, tmp_path):
    s = spec(gpt2, tmp_path, "dataset=arc_easy", f"dataset.path={FIX / 'arc'}", "extract.max_positions=5")
    with pytest.raises(ConfigError, match="dataset.n_documents"):
        extract(s, lm)
    s = spec(gpt2, tmp_path, "dataset=cbt_cn", f"dataset.path={FIX / 'cbt'}", "dataset.task_protocol=bogus")
    with pytest.raises(ConfigError, match="gpt2"):
        extract(s, lm)


# ---------------------------------------------------------------- the stream


def test_split_pair_moves_trailing_context_whitespace_to_the_continuation():
    assert split_pair("Tom put the ", "ball .") == ("Tom put the", " ball .")
    assert split_pair("Answer:\n \t", " x") == ("Answer:", "\n \t x")
    assert split_pair("Answer:", " x") == ("Answer:", " x")


@pytest.mark.parametrize("loader,path,protocol", [
    ("lambada_last_word", FIX / "lambada_openai" / "lambada_test.jsonl", None),
    ("cbt", FIX / "cbt" / "cbtest_CN_test_2500ex.txt", "gpt2"),
    ("cbt", FIX / "cbt" / "cbtest_CN_test_2500ex.txt", "whole_query"),
    ("arc", FIX / "arc" / "ARC-Easy-Test.jsonl", None)])
@pytest.mark.parametrize("context_length", [L, 12])
def test_scored_tokens_are_exactly_the_continuation(lm, loader, path, protocol, context_length):
    tok = lm.tokenizer
    task = load_task(dspec(loader, path, protocol))
    ts = build_task_stream(task, tok, Protocol(context_length=context_length, stride=context_length), lm.bos_id)
    s = ts.stream
    pairs = [(it, o) for it in task.items for o in range(len(it.continuations))]
    assert len(s.segments) == len(pairs)
    for seg, (it, o) in zip(s.segments, pairs):
        ctx, cont = split_pair(it.context, it.continuations[o])
        c = tok(ctx, add_special_tokens=False).input_ids
        whole = tok(ctx + cont, add_special_tokens=False).input_ids
        scored = seg.seq[seg.scored].tolist()
        assert scored == whole[len(c):]                                       # lm-evaluation-harness's split
        assert tok.decode(scored) == cont                                     # byte-level: the continuation text
        prefix = [lm.bos_id] + c
        assert seg.seq[~seg.scored].tolist() == prefix[-context_length:]      # only the last L context tokens kept
        assert np.all(seg.scored[seg.scored.argmax():])                       # context first, then continuation
        assert seg.n_chars[seg.scored].sum() == len(cont) and seg.n_bytes[seg.scored].sum() == len(cont.encode())
    # store order: by (item, option, token); doc_id = item_id; the layout checks of pipeline.store.tasks pass
    w = s.windows()
    pos = s.position_arrays(w, 0, len(w))
    assert np.all(np.diff(pos["item_id"]) >= 0) and np.array_equal(pos["doc_id"], pos["item_id"])
    off = option_offsets(pos["item_id"], pos["option_id"], ts.tables["item_n_options"])
    assert len(off) == len(pairs) + 1
    np.testing.assert_array_equal(ts.tables["option_n_chars"], [len(it.options[o]) for it, o in pairs])
    np.testing.assert_array_equal(ts.tables["option_n_bytes"], [len(it.options[o].encode()) for it, o in pairs])
    np.testing.assert_array_equal(ts.tables["item_label"], [it.label for it in task.items])
    # windows: the first starts at the first continuation token and holds at most L inputs; targets once each
    seen = [np.zeros(len(x.seq), int) for x in s.segments]
    for i in range(len(w)):
        seg, a, c, d = s.segments[w.seg[i]], w.a[i], w.c[i], w.d[i]
        assert 0 <= a < c < d and d - 1 - a <= context_length
        seen[w.seg[i]][c:d] += 1
    for x, n in zip(s.segments, seen):
        np.testing.assert_array_equal(n, x.scored.astype(int))
        first = [i for i in range(len(w)) if s.segments[w.seg[i]] is x][0]
        assert w.c[first] == x.scored.argmax()
    if context_length == L:   # every continuation fits: one window per option, holding the last L tokens
        assert len(w) == len(pairs)
        assert all(w.a[i] == max(0, w.d[i] - 1 - L) and w.d[i] == len(s.segments[w.seg[i]].seq) for i in range(len(w)))


@settings(max_examples=60, deadline=None)
@given(prefix=st.lists(st.integers(1, 30), min_size=1, max_size=4), cont=st.data(), L_=st.integers(1, 12),
       data=st.data())
def test_windows_start_at_the_first_scored_token_and_score_it_all_once(prefix, cont, L_, data):
    S = data.draw(st.integers(1, L_))
    conts = [cont.draw(st.integers(1, 30)) for _ in prefix]
    lengths = [p + c for p, c in zip(prefix, conts)]
    scored = [np.r_[np.zeros(p, bool), np.ones(c, bool)] for p, c in zip(prefix, conts)]
    w = make_windows(lengths, scored, Protocol(context_length=L_, stride=S))
    seen = [np.zeros(T, int) for T in lengths]
    for i in range(len(w)):
        a, c, d = w.a[i], w.c[i], w.d[i]
        assert 0 <= a < c < d <= lengths[w.seg[i]] and d - 1 - a <= L_
        seen[w.seg[i]][c:d] += 1
    for k in range(len(lengths)):
        np.testing.assert_array_equal(seen[k], scored[k].astype(int))
        first = int(np.flatnonzero(w.seg == k)[0])
        assert w.c[first] == prefix[k] and w.d[first] == min(prefix[k] + L_, lengths[k])
        assert w.a[first] == max(0, w.d[first] - 1 - L_)
    assert w.n_positions == sum(conts)


# ---------------------------------------------------------------- end to end, against brute force


@torch.no_grad()
def brute_force(lm, task, bos: bool = True):
    """Per (item, option): [BOS] + tok(ctx) + continuation tokens, the last L + 1 tokens (lm-evaluation-
    harness's left truncation), one forward, float64 log_softmax -> the continuation's log-probs."""
    tok, out = lm.tokenizer, []
    for it in task.items:
        per_option = []
        for cont_text in it.continuations:
            ctx, cont = split_pair(it.context, cont_text)
            c = tok(ctx, add_special_tokens=False).input_ids
            cont_ids = tok(ctx + cont, add_special_tokens=False).input_ids[len(c):]
            ids = ([lm.bos_id] if bos else []) + c + cont_ids
            inp = ids[-(L + 1):][:-1]
            logits = lm.model(input_ids=torch.tensor([inp])).logits[0].double()
            lp = torch.log_softmax(logits[len(inp) - len(cont_ids):], -1)
            tgt = torch.tensor(cont_ids)
            own = lp[torch.arange(len(cont_ids)), tgt]
            others = lp.clone()
            others[torch.arange(len(cont_ids)), tgt] = -math.inf
            per_option.append((own.numpy(), bool((own > others.max(-1).values).all())))
        out.append(per_option)
    return out


def nll_tol(ref) -> float:
    """How far a mean NLL from the store may be from the brute force's: each float32 log-prob (another batch
    layout, another reduction order) within 1e-4 + 1e-5 |lp|, and a word's sum within the sum of its tokens'."""
    return max(float(np.sum(1e-4 + 1e-5 * np.abs(lp))) for opts in ref for lp, _ in opts)


def assert_metrics_close(metrics, direct, ref):
    for k, v in direct.items():
        if k.startswith("log_"):  # a PPL: compared in log space, at the log-probs' precision
            assert math.log(metrics[k.removeprefix("log_")]) == pytest.approx(v, rel=0, abs=nll_tol(ref)), k
        else:
            assert metrics[k] == pytest.approx(v, rel=1e-12), k


def direct_metrics(kind, task, ref) -> dict:
    """The single-model metrics from the brute-force log-probs; PPLs as their logs (``log_*``: mean NLLs), since
    exp of a sum of float32 log-probs turns their CPU-dependent rounding into large relative differences."""
    if kind == "last_word":
        words = np.array([opts[0][0].sum() for opts in ref])
        toks = np.concatenate([opts[0][0] for opts in ref])
        return {"log_word_ppl": -words.mean(), "log_token_ppl": -toks.mean(),
                "acc": float(np.mean([opts[0][1] for opts in ref]))}
    acc, norm, nbytes = [], [], []
    for it, opts in zip(task.items, ref):
        sums = np.array([lp.sum() for lp, _ in opts])
        for out, scores in ((acc, sums), (norm, sums / np.array([len(o) for o in it.options])),
                            (nbytes, sums / np.array([len(o.encode()) for o in it.options]))):
            best = np.flatnonzero(scores == scores.max())
            out.append(len(best) == 1 and best[0] == it.label)
    return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(norm)), "acc_bytes": float(np.mean(nbytes))}


CASES = [("lambada_openai", "lambada_openai", "lm_eval", "last_word"),
         ("cbt_cn", "cbt", "gpt2", "multiple_choice"),
         ("cbt_cn", "cbt", "whole_query", "multiple_choice"),
         ("cbt_ne", "cbt/cbtest_NE_test_2500ex.txt", "gpt2", "multiple_choice"),
         ("arc_easy", "arc", "lm_eval", "multiple_choice")]


@pytest.mark.parametrize("dataset,fixture,protocol,kind", CASES)
def test_extraction_matches_a_brute_force_forward_per_option(gpt2, lm, tmp_path, dataset, fixture, protocol, kind):
    batch = 3 if dataset == "arc_easy" else 1   # padded batches give the same log-probs
    s = spec(gpt2, tmp_path, f"dataset={dataset}", f"dataset.path={FIX / fixture}",
             f"dataset.task_protocol={protocol}", f"model.batch_size={batch}", "extract.chunk_size=16")
    store = extract(s, lm)
    assert verify_store(store.path).ok
    task = load_task(s.dataset)
    ref = brute_force(lm, task)
    got = store.read(["target_logprob", "item_id", "option_id", "doc_id", "targets"])
    want = np.concatenate([lp for opts in ref for lp, _ in opts])
    np.testing.assert_allclose(got["target_logprob"], want, atol=1e-4, rtol=0)
    rows_ = [(i, o) for i, opts in enumerate(ref) for o, (lp, _) in enumerate(opts) for _ in lp]
    np.testing.assert_array_equal(np.stack([got["item_id"], got["option_id"]], 1), rows_)
    np.testing.assert_array_equal(got["doc_id"], got["item_id"])
    a = store.attrs
    t = a["task"]
    assert (t["name"], t["kind"], t["protocol"], t["n_items"], t["n_source_items"]) == (
        dataset, kind, protocol, len(task.items), len(task.items))
    assert t["skipped"] == {} and t["metrics"] == {"lambada_openai": ["word_ppl", "token_ppl", "acc"],
                                                   "cbt_cn": ["acc"], "cbt_ne": ["acc"],
                                                   "arc_easy": ["acc", "acc_norm"]}[dataset]
    np.testing.assert_array_equal(store.table("item_n_options"), [len(it.options) for it in task.items])
    np.testing.assert_array_equal(store.table("item_source_index"), np.arange(len(task.items)))
    m = a["metrics"]
    assert_metrics_close(m, direct_metrics(kind, task, ref), ref)
    assert m["n_items"] == len(task.items) and m["token_metrics"]["n_positions"] == len(want)
    assert a["dataset"]["text_sha256"] == task.meta["text_sha256"] and a["protocol"]["bos"] == "document"
    # a byte-level tokenizer round-trips every option: n_chars/n_bytes are exact (regression: the flag was inverted)
    assert a["protocol"]["exact_char_alignment"] is True
    assert store.path.name.endswith(f"-{protocol.replace('_', '')}.zarr")


def test_last_word_accuracy_counts_items_whose_every_token_is_the_strict_top1(gpt2, tmp_path):
    """A GPT-2 whose final hidden state is a constant aligned with one token's embedding predicts that token
    everywhere: the passages whose last word is that one token are right, the others wrong."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2)
    (t,) = tok(" and", add_special_tokens=False).input_ids  # one token in the tiny vocabulary
    model = AutoModelForCausalLM.from_pretrained(gpt2)
    v = torch.nn.functional.normalize(torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(0)), dim=0)
    with torch.no_grad():
        model.transformer.wte.weight[t] = 10 * v    # tied head: logit(t) = 50, the others ~ 5 N(0, 1)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(5 * v)
    fixed = tmp_path / "argmax-and"
    model.save_pretrained(fixed)
    tok.save_pretrained(fixed)
    texts = ["She bought bread and", "The fox ran into the woods", "Dogs and cats and", "Owls hoot at night"]
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": x} for x in texts])
    s = spec(fixed, tmp_path, "dataset=lambada_openai", f"dataset.path={path}")
    lm_ = load_model(s.model)
    store = extract(s, lm_)
    ref = brute_force(lm_, load_task(s.dataset))
    assert [opts[0][1] for opts in ref] == [True, False, True, False]
    assert store.attrs["metrics"]["acc"] == 0.5 == direct_metrics("last_word", None, ref)["acc"]
    # word PPL ~ e^136 here: exp would turn float32 rounding into ~1e-4 relative differences, so in log space
    assert_metrics_close(store.attrs["metrics"], direct_metrics("last_word", None, ref), ref)


def test_no_bos_protocol_matches_brute_force_without_bos(gpt2, lm, tmp_path):
    s = spec(gpt2, tmp_path, "dataset=arc_easy", f"dataset.path={FIX / 'arc'}", "dataset.protocol.bos=none")
    store = extract(s, lm)
    ref = brute_force(lm, load_task(s.dataset), bos=False)
    np.testing.assert_allclose(store.read(["target_logprob"])["target_logprob"],
                               np.concatenate([lp for opts in ref for lp, _ in opts]), atol=1e-4, rtol=0)
    assert store.path.name.endswith("-lmeval-nobos.zarr") and store.attrs["protocol"]["bos_token_id"] is None


def test_skipped_items_are_counted_in_the_store(gpt2, lm, tmp_path):
    texts = ["The fox ran into the woods", "nolastword", "The dog ran after the fox ", "Owls hoot at night"]
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": t} for t in texts])
    store = extract(spec(gpt2, tmp_path, "dataset=lambada_openai", f"dataset.path={path}"), lm)
    t = store.attrs["task"]
    assert t["skipped"] == {"no_last_word": 2} and t["skipped_source_index"] == {"no_last_word": [1, 2]}
    assert (t["n_items"], t["n_source_items"]) == (2, 4)
    np.testing.assert_array_equal(store.table("item_source_index"), [0, 3])
    np.testing.assert_array_equal(np.unique(store.read(["item_id"])["item_id"]), [0, 1])


def test_two_cbt_protocols_give_two_stores_recorded_apart(gpt2, lm, tmp_path):
    stores = {p: extract(spec(gpt2, tmp_path, "dataset=cbt_cn", f"dataset.path={FIX / 'cbt'}",
                              f"dataset.task_protocol={p}"), lm) for p in ("gpt2", "whole_query")}
    a, b = stores["gpt2"], stores["whole_query"]
    assert a.path != b.path and a.path.parent == b.path.parent
    assert (a.path.name, b.path.name) == ("L56-S56-K8-lp16-float32-gpt2.zarr", "L56-S56-K8-lp16-float32-wholequery.zarr")
    assert a.attrs["task"]["protocol"] == "gpt2" and b.attrs["task"]["protocol"] == "whole_query"
    assert a.attrs["setting_hash"] != b.attrs["setting_hash"] and a.attrs["stream_hash"] != b.attrs["stream_hash"]
    assert a.attrs["dataset"]["text_sha256"] == b.attrs["dataset"]["text_sha256"]
    assert b.attrs["n_positions"] > a.attrs["n_positions"]  # whole_query also scores the query's prefix


def test_a_killed_task_extraction_resumes_to_the_same_store(gpt2, lm, tmp_path):
    s = spec(gpt2, tmp_path, "dataset=cbt_cn", f"dataset.path={FIX / 'cbt'}", "extract.chunk_size=64",
             f"store={tmp_path / 'resumed.zarr'}")
    calls = {"n": 0}
    real = lm.hidden

    def dies_after_eight(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt("killed")
        return real(*args, **kw)

    lm.hidden = dies_after_eight
    try:
        with pytest.raises(KeyboardInterrupt):
            extract(s, lm)
    finally:
        lm.hidden = real
    resumed = extract(s, lm)
    clean = extract(RunSpec(**{**s.__dict__, "store": str(tmp_path / "clean.zarr")}), lm)
    assert resumed.attrs["metrics"]["resumed_from"] > 0
    names = ["targets", "target_logprob", "target_rank", "topk_ids", "item_id", "option_id", "n_chars"]
    x, y = resumed.read(names), clean.read(names)
    for n in names:
        np.testing.assert_array_equal(x[n], y[n], err_msg=n)
    for k in ("acc", "acc_norm", "acc_bytes"):
        assert resumed.attrs["metrics"][k] == clean.attrs["metrics"][k]


def test_cli_extracts_a_task_store(gpt2, tmp_path):
    env = {**os.environ, "ARCACHE_STORES": str(tmp_path / "stores"), "HYDRA_FULL_ERROR": "1"}
    r = subprocess.run([sys.executable, "-m", "pipeline.extract", f"model.name_or_path={gpt2}", "dataset=cbt_cn",
                        f"dataset.path={FIX / 'cbt'}", "dataset.task_protocol=whole_query", "extract.top_k=8",
                        f"extract.context_length={L}", "extract.progress=false"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = (tmp_path / "stores" / "cbt_cn" / "test" / "gpt2").glob("*.zarr")
    assert path.name == "L56-S56-K8-lp16-float32-wholequery.zarr"
    store = open_store(path)
    assert store.attrs["task"]["n_items"] == 2 and "acc" in store.attrs["metrics"]
    logged = r.stdout + r.stderr + "".join(p.read_text() for p in (tmp_path / "stores" / "_runs").rglob("*.log"))
    assert "(whole_query, 2 items, 0 skipped): acc " in logged


def test_task_items_are_scored_independently_only(gpt2, lm, tmp_path):
    s = spec(gpt2, tmp_path, "dataset=arc_easy", f"dataset.path={FIX / 'arc'}", "dataset.protocol.scoring=joined")
    with pytest.raises(ConfigError, match="independent"):
        build_task_stream(load_task(s.dataset), lm.tokenizer, resolve_protocol(s, lm.max_length), lm.bos_id)
