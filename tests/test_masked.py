"""Masked protein LM stores (kind "masked"): tiny random-init ESM models built from configs, checked against a
direct float64 forward pass computed here from the documented masking rule (not from the store's token_index)."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.extraction.config import run_spec_from_dict
from pipeline.extraction.errors import EmptyDatasetError, SequenceFormatError
from pipeline.store import align, open_store
from pipeline.store.errors import IncompatiblePairError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N",
         "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]
AA = "ACDEFGHIKLMNPQRSTVWY"
MAX_POS = 24          # ESM convention: 22 tokens per forward = <cls> + 20 residues + <eos>
W = MAX_POS - 4       # residues per window


def _records():
    rng = np.random.default_rng(7)
    seqs = ["".join(rng.choice(list(AA), size=n)) for n in (9, 17, 3, 20, 12)]
    seqs.append("".join(rng.choice(list(AA), size=47)))      # longer than one window: split in 3
    seqs.append("MKTAJJIAKQ")                                # 'J' is outside ESM's alphabet: skipped
    seqs.append("mktayiakqrQISF*")                           # lower case and a stop codon: cleaned
    seqs.append("A")                                         # one residue: one mask
    return [(f"seq{i} some description", s) for i, s in enumerate(seqs)]


def write_fasta(path: Path, records) -> Path:
    with open(path, "w") as f:
        for name, s in records:
            f.write(f">{name}\n")
            for i in range(0, len(s), 7):  # wrapped lines
                f.write(s[i:i + 7] + "\n")
    return path


def make_esm(directory: Path, hidden: int, layers: int, seed: int) -> Path:
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB))
    tok = EsmTokenizer(vocab_file=str(directory / "vocab.txt"))
    cfg = EsmConfig(vocab_size=33, mask_token_id=32, pad_token_id=1, hidden_size=hidden, num_hidden_layers=layers,
                    num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=MAX_POS,
                    position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False,
                    initializer_range=0.5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    EsmForMaskedLM(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("masked")
    return {"fasta": write_fasta(d / "p.fasta", _records()), "a": make_esm(d / "esm-a", 16, 1, 0),
            "b": make_esm(d / "esm-b", 24, 2, 1), "dir": d}


def spec(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("extract", overrides=list(overrides))
    return run_spec_from_dict(OmegaConf.to_container(cfg, resolve=True))


def run(model: Path, fasta: Path, store: Path, *extra):
    from pipeline.extraction.run import extract

    return extract(spec(f"model.name_or_path={model}", "dataset=fasta", f"dataset.path={fasta}", f"store={store}",
                        "extract.progress=false", *extra))


# ---------------------------------------------------------------- the reference, written from the documented rule


def ref_masks(seq: str, doc: int, seed: int = 0, fraction: float = 0.15) -> list[int]:
    n = len(seq)
    k = min(n, max(1, math.floor(fraction * n + 0.5)))
    key = int.from_bytes(hashlib.sha256(f"{seed}:{doc}:{seq}".encode()).digest()[:8], "little")
    u = np.random.PCG64(key).random_raw(n)
    return sorted(sorted(range(n), key=lambda i: (int(u[i]), i))[:k])


def reference(model_dir: Path, records, policy: str = "split"):
    """Rows (doc_id, token_index, target, float64 log-probs over the 33 classes) of a direct forward pass."""
    from transformers import EsmForMaskedLM

    model = EsmForMaskedLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    rows = []
    for doc, (_, raw) in enumerate(records):
        s = raw[:-1] if raw.endswith("*") else raw
        s = s.upper()
        if any(c not in VOCAB for c in s):
            continue
        n = len(s)
        if n > W and policy == "truncate":
            s, n = s[:W], W
        m = math.ceil(n / W)
        masks = ref_masks(s, doc)
        for i in range(m):
            lo, hi = i * n // m, (i + 1) * n // m
            mine = [j for j in masks if lo <= j < hi]
            if not mine:
                continue
            ids = [0] + [VOCAB.index(c) for c in s[lo:hi]] + [2]
            for j in mine:
                ids[1 + j - lo] = 32
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1).numpy()
            for j in mine:
                rows.append((doc, j, VOCAB.index(s[j]), lp[1 + j - lo]))
    return rows


def check_against(store, rows, K=33):
    r = store.read(["doc_id", "token_index", "targets", "target_logprob", "target_rank", "target_ties",
                    "topk_ids", "topk_logprobs", "tail_logmass", "entropy"])
    assert r["doc_id"].tolist() == [x[0] for x in rows]
    assert r["token_index"].tolist() == [x[1] for x in rows]
    assert r["targets"].tolist() == [x[2] for x in rows]
    full = np.stack([x[3] for x in rows])
    t = np.array([x[2] for x in rows])
    want = full[np.arange(len(t)), t]
    np.testing.assert_allclose(r["target_logprob"], want, atol=2e-5, rtol=0)
    assert (r["target_rank"] == (full > want[:, None] + 1e-9).sum(1)).all()
    assert (r["target_ties"] == 0).all()
    k = min(K, 33)
    rtol = 2.0 ** -11 if r["topk_logprobs"].dtype == np.float16 else 0.0  # half an ulp of the storage dtype
    top = r["topk_logprobs"].astype(np.float64)
    np.testing.assert_allclose(top, -np.sort(-full, 1)[:, :k], atol=2e-5, rtol=rtol)
    got = np.take_along_axis(full, r["topk_ids"].astype(np.int64), 1)
    np.testing.assert_allclose(got, top, atol=2e-5, rtol=rtol)  # the ids carry their log-probs
    np.testing.assert_allclose(r["entropy"], -(np.exp(full) * full).sum(1), atol=5e-5)
    if k == 33:
        assert np.isneginf(r["tail_logmass"]).all()


# ---------------------------------------------------------------- tests


def test_mask_rule_and_window_policy_are_documented_functions():
    from pipeline.extraction.sequences import mask_positions, n_masked, window_bounds

    for n in (1, 2, 6, 7, 10, 100, 1000):
        s = "A" * n
        m = mask_positions(s, 3, 0, 0.15)
        assert m.tolist() == ref_masks(s, 3) and len(m) == n_masked(n, 0.15) == max(1, math.floor(0.15 * n + .5))
    s = "".join(np.random.default_rng(0).choice(list(AA), 400))
    assert mask_positions(s, 0, 0, 0.15).tolist() != mask_positions(s, 0, 1, 0.15).tolist()  # the seed matters
    assert mask_positions(s, 0, 0, 0.15).tolist() != mask_positions(s, 1, 0, 0.15).tolist()  # so does doc_id
    assert window_bounds(47, 20, "split") == [(0, 15), (15, 31), (31, 47)]
    assert window_bounds(47, 20, "truncate") == [(0, 20)] and window_bounds(20, 20, "split") == [(0, 20)]


def test_cli_contract_matches_a_direct_forward_pass(setup, tmp_path):
    out = tmp_path / "OUT.zarr"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "pipeline.extract", f"model.name_or_path={setup['a']}", "dataset=fasta",
                        f"dataset.path={setup['fasta']}", f"store={out}", "extract.progress=false",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert "out_of_alphabet: 1" in log and "'J' x2" in log  # counted and reported in the log
    store = open_store(out)
    assert store.kind == "masked" and store.complete and store.k == 33
    check_against(store, reference(setup["a"], _records()))
    a = store.attrs
    assert a["dataset"]["skipped"] == {"out_of_alphabet": 1} and a["dataset"]["unknown_letters"] == {"J": 2}
    assert a["dataset"]["skipped_doc_ids"] == {"out_of_alphabet": [6]}
    assert a["dataset"]["n_terminal_stop_stripped"] == 1 and a["dataset"]["n_sequences"] == 8
    assert a["dataset"]["file_sha256"] == hashlib.sha256(setup["fasta"].read_bytes()).hexdigest()
    pr = a["protocol"]
    assert pr["context_length"] == MAX_POS - 2 and pr["stride"] is None and pr["max_residues_per_window"] == W
    assert pr["masking"]["fraction"] == 0.15 and pr["masking"]["seed"] == 0
    assert pr["long_sequences"] == {"policy": "split", "max_residues": W, "n_affected": 1, "n_windows": 3,
                                    "n_residues_not_scored": 0}
    assert a["metrics"]["n_positions"] == store.n and a["model"]["head_path"].startswith("float32 MLM head")
    tlp = store.read(["target_logprob"])["target_logprob"].astype(np.float64)
    assert a["metrics"]["ppl"] == pytest.approx(math.exp(-tlp.mean()), rel=1e-12)


def test_models_of_one_run_mask_the_same_residues_and_other_masks_are_refused(setup, tmp_path):
    sa = run(setup["a"], setup["fasta"], tmp_path / "a.zarr")
    sb = run(setup["b"], setup["fasta"], tmp_path / "b.zarr")
    check_against(sb, reference(setup["b"], _records()))
    for name in ("doc_id", "token_index", "targets"):
        assert (sa.read([name])[name] == sb.read([name])[name]).all()
    assert sa.stream_hash == sb.stream_hash and align(sa, sb).ok
    sc = run(setup["a"], setup["fasta"], tmp_path / "c.zarr", "dataset.masking.seed=1")
    assert sc.stream_hash != sa.stream_hash
    al = align(sa, sc)
    assert not al.ok
    with pytest.raises(IncompatiblePairError, match="masked"):
        al.raise_if_incompatible()


def test_csv_with_a_sequence_column_gives_the_fasta_stream(setup, tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("id,sequence\n" + "".join(f"r{i},{s}\n" for i, (_, s) in enumerate(_records())))
    sf = run(setup["a"], setup["fasta"], tmp_path / "f.zarr")
    sc = run(setup["a"], csv, tmp_path / "c.zarr", "dataset.loader=sequence_csv", "dataset.text_field=sequence")
    assert sc.stream_hash == sf.stream_hash
    assert sc.dataset["text_sha256"] == sf.dataset["text_sha256"]
    with pytest.raises(SequenceFormatError, match="no column 'seq'"):
        run(setup["a"], csv, tmp_path / "x.zarr", "dataset.loader=sequence_csv", "dataset.text_field=seq")


def test_a_pinned_sequence_sha256_is_enforced(setup, tmp_path):
    """A config that pins the split's sha256 (as the hub datasets' configs do once their value is known) accepts the
    file that gives it and refuses any other, before the model runs; unpinned runs record the value."""
    from pipeline.extraction.errors import DatasetChecksumError

    s = run(setup["a"], setup["fasta"], tmp_path / "p.zarr")
    digest = s.dataset["text_sha256"]
    assert len(digest) == 64
    run(setup["a"], setup["fasta"], tmp_path / "ok.zarr", f"+dataset.text_sha256.all={digest}")
    other = write_fasta(tmp_path / "other.fasta", _records()[:-1])
    with pytest.raises(DatasetChecksumError, match="sha256"):
        run(setup["a"], other, tmp_path / "bad.zarr", f"+dataset.text_sha256.all={digest}")
    assert not (tmp_path / "bad.zarr").exists() or not any((tmp_path / "bad.zarr").iterdir())


def test_out_of_alphabet_as_unk_truncation_and_loss_cap(setup, tmp_path):
    s = run(setup["a"], setup["fasta"], tmp_path / "u.zarr", "dataset.masking.unknown=unk",
            "dataset.masking.long_sequences=truncate", "extract.loss_cap=0.5")
    d, pr = s.attrs["dataset"], s.attrs["protocol"]
    assert d["n_skipped"] == 0 and d["n_unknown_residues_as_unk"] == 2 and d["unknown_letters"] == {"J": 2}
    assert pr["long_sequences"]["n_residues_not_scored"] == 47 - W and pr["residues"]["unknown"] == "unk"
    idx = s.read(["doc_id", "token_index", "targets"])
    rows = reference(setup["a"], [r for i, r in enumerate(_records()) if i != 6], policy="truncate")
    long_doc = 5
    got = idx["token_index"][idx["doc_id"] == long_doc]
    assert got.max() < W and got.tolist() == [x[1] for x in rows if x[0] == long_doc]
    j = idx["targets"][idx["doc_id"] == 6]
    masks6 = ref_masks("MKTAJJIAKQ", 6)
    assert j.tolist() == [3 if "MKTAJJIAKQ"[i] == "J" else VOCAB.index("MKTAJJIAKQ"[i]) for i in masks6]
    m = s.attrs["metrics"]
    assert m["loss_cap"]["cap"] == 0.5 and m["loss_cap"]["exceeded"] is True and m["ppl_capped"] == "inf"
    assert math.isfinite(m["ppl"])


def test_empty_or_malformed_files_are_typed_errors(setup, tmp_path):
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    with pytest.raises(EmptyDatasetError, match="no FASTA records"):
        run(setup["a"], empty, tmp_path / "e.zarr")
    blank = write_fasta(tmp_path / "blank.fasta", [("a", ""), ("b", "*")])
    with pytest.raises(EmptyDatasetError, match="empty: 2"):
        run(setup["a"], blank, tmp_path / "b.zarr")
    bad = tmp_path / "bad.fasta"
    bad.write_text("MKTAYIAK\n>x\nMKV\n")
    with pytest.raises(SequenceFormatError, match="before any '>' header"):
        run(setup["a"], bad, tmp_path / "x.zarr")
    assert not (tmp_path / "e.zarr").exists() or not any((tmp_path / "e.zarr").iterdir())


def test_a_killed_run_resumes_bit_identical(setup, tmp_path, monkeypatch):
    from pipeline.extraction import masked

    whole = run(setup["a"], setup["fasta"], tmp_path / "whole.zarr", "extract.chunk_size=4")
    real, calls = masked.MaskedModel.scored_logits, {"n": 0}

    def dies(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(masked.MaskedModel, "scored_logits", dies)
    with pytest.raises(KeyboardInterrupt):
        run(setup["a"], setup["fasta"], tmp_path / "r.zarr", "extract.chunk_size=4")
    monkeypatch.setattr(masked.MaskedModel, "scored_logits", real)
    resumed = run(setup["a"], setup["fasta"], tmp_path / "r.zarr", "extract.chunk_size=4")
    assert resumed.attrs["metrics"]["resumed_from"] > 0
    for name in whole.names:
        assert (whole.read([name])[name] == resumed.read([name])[name]).all(), name
    assert resumed.attrs["metrics"]["ppl"] == whole.attrs["metrics"]["ppl"]


def test_a_small_esm_trains_and_loads_like_esm2(tmp_path):
    from pipeline.extraction.masked import load_masked_model
    from pipeline.training.config import TrainSpec
    from pipeline.training.masked import train_masked

    fasta = write_fasta(tmp_path / "t.fasta", _records())
    ds = spec("model.name_or_path=x", "dataset=fasta", f"dataset.path={fasta}").dataset
    out = train_masked(TrainSpec(name="t", arch="esm", embed_size=16, num_layers=1, nhead=2, ffn_size=32,
                                 seq_len=20, dropout=0.0, batch_size=4, max_steps=3, device="cpu"),
                       ds, tmp_path / "m", progress=False)
    assert (out / "model.safetensors").exists() and (out / "vocab.txt").read_text().split() == VOCAB
    lm = load_masked_model(spec(f"model.name_or_path={out}", "dataset=fasta", "dataset.path=x").model)
    assert lm.max_length == 22 and lm.n_classes == 33 and lm.info["position_embedding_type"] == "rotary"
    assert lm.tokenizer.mask_token_id == 32 and lm.tokenizer("LAG")["input_ids"] == [0, 4, 5, 6, 2]


def test_named_configs_compose():
    for m in ("esm2-8m", "esm2-35m", "esm2-150m", "esm2-650m", "esm2-3b"):
        s = spec(f"model={m}", "dataset=uniref50")
        assert s.model.name_or_path.startswith("facebook/esm2_t") and s.dataset.loader == "sequence_csv"
    s = spec("+experiment=demo_proteins_extract", "model.name_or_path=x", "dataset.split=valid")
    assert s.dataset.name == "proteins_demo" and s.dataset.text_sha256["valid"] and s.skip_existing
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train", overrides=["+experiment=demo_proteins", "train=esm_medium"]),
                                     resolve=True)
    from pipeline.training.config import train_spec_from_dict

    t = train_spec_from_dict(cfg["train"])
    assert (t.arch, t.name, cfg["dataset"]["split"]) == ("esm", "esm-medium", "train")
