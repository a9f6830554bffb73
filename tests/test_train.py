"""Training stage: word-level vocabulary, the reference models, determinism, saving, loading like hub models."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.extraction.config import DatasetSpec, ModelSpec
from pipeline.extraction.models import load_model
from pipeline.training.config import TrainConfigError, TrainSpec, train_spec_from_dict
from pipeline.training.models import ARRNNConfig, ARRNNForCausalLM
from pipeline.training.run import MARKER, train
from pipeline.training.wordlevel import build_word_tokenizer

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat on mat ran to house big small red blue".split()


def corpus(n_docs=60, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        # a simple grammar so that a model can learn something in a few steps
        sent = [" ".join(["the", WORDS[2 + rng.integers(0, 2)], "sat", "on", "the", "mat."]) for _ in range(6)]
        docs.append(" ".join(sent))
    return docs


@pytest.fixture
def text_dataset(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in corpus()))
    return DatasetSpec(name="toy", split="train", loader="text_file", path=str(path))


def test_word_tokenizer_vocabulary_and_offsets():
    tok = build_word_tokenizer(["b a a, c", "a b b d"], max_size=5, min_freq=2)
    vocab = tok.get_vocab()
    assert vocab["<unk>"] == 0 and vocab["<eos>"] == 1
    assert vocab["a"] == 2 and vocab["b"] == 3  # most frequent first (3 each: alphabetical tie-break)
    assert "c" not in vocab and "d" not in vocab  # below min_freq
    enc = tok("a c, b", add_special_tokens=False, return_offsets_mapping=True)
    assert len(vocab) == 4 and enc["input_ids"] == [2, 0, 0, 3]  # "," and "c" are unknown
    assert enc["offset_mapping"] == [(0, 1), (2, 3), (3, 4), (5, 6)]
    assert len(build_word_tokenizer(["x y z w"] * 3, max_size=4, min_freq=1)) == 4


@pytest.mark.parametrize("arch,extra", [("lstm", {}), ("gru", {}), ("transformer", {"embed_size": 16}),
                                        ("simple_transformer", {})])
def test_each_architecture_learns_saves_and_loads_like_a_hub_model(tmp_path, text_dataset, arch, extra):
    if arch == "simple_transformer":
        tok = build_word_tokenizer(corpus(), 100, 1)
        tok.save_pretrained(tmp_path / "tok")
        extra = {"tokenizer": str(tmp_path / "tok"), "embed_size": 32, "num_layers": 2, "nhead": 2,
                 "ffn_size": 64, "max_length": 32, "batch_size": 4, "grad_accum": 2, "lr": 3e-3, "warmup": 0.1,
                 "clip": 1.0, "dropout": 0.0}
    spec = TrainSpec(name=f"toy-{arch}", arch=arch, epochs=3, batch_size=extra.pop("batch_size", 4),
                     seq_len=12, vocab_min_freq=1, **extra)
    out = train(spec, text_dataset, tmp_path / "model", progress=False)
    meta = json.loads((out / MARKER).read_text())
    assert meta["train_losses"][-1] < meta["train_losses"][0] - 0.3, meta["train_losses"]
    assert meta["n_params"] > meta["n_params_nonembed"] > 0
    # the same loader as hub models
    lm = load_model(ModelSpec(name=spec.name, name_or_path=str(out), device="cpu", dtype="float32"))
    assert lm.info["n_params"] == meta["n_params"]
    assert lm.head_weight is not None  # logits are a plain linear head of the hidden state
    ids = lm.tokenizer("the cat sat on the mat.", add_special_tokens=False, return_tensors="pt")["input_ids"]
    logp = torch.log_softmax(lm.logits(ids)[0].float(), -1)
    nll = -logp[:-1].gather(1, ids[0, 1:, None]).mean().item()
    assert nll < np.log(len(lm.tokenizer))  # better than uniform: it learned the toy grammar


def test_training_is_deterministic_and_reused(tmp_path, text_dataset):
    spec = TrainSpec(name="det", arch="lstm", embed_size=8, hidden_size=16, epochs=1, batch_size=4, seq_len=10,
                     vocab_min_freq=1)
    a = train(spec, text_dataset, tmp_path / "a", progress=False)
    b = train(spec, text_dataset, tmp_path / "b", progress=False)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    train(spec, text_dataset, tmp_path / "a", progress=False)  # already trained: reused
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp
    train(spec, text_dataset, tmp_path / "a", overwrite=True, progress=False)
    assert (a / "model.safetensors").stat().st_mtime_ns != stamp


def test_recurrent_state_is_carried():
    model = ARRNNForCausalLM(ARRNNConfig(vocab_size=20, embed_size=8, hidden_size=8)).eval()
    x = torch.randint(0, 20, (1, 12))
    whole = model(x).logits
    first = model(x[:, :5], use_cache=True)
    rest = model(x[:, 5:], past_key_values=first.past_key_values, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], 1), whole)


def test_config_errors_are_typed():
    with pytest.raises(TrainConfigError, match="arch"):
        TrainSpec(name="x", arch="cnn")
    with pytest.raises(TrainConfigError, match="tokenizer"):
        TrainSpec(name="x", arch="simple_transformer")
    with pytest.raises(TrainConfigError, match="divisible"):
        TrainSpec(name="x", arch="transformer", embed_size=15, nhead=2)
    with pytest.raises(TrainConfigError, match="unknown key"):
        train_spec_from_dict({"name": "x", "arch": "lstm", "embedsize": 3})


@pytest.mark.parametrize("group", ["lstm", "gru", "transformer", "simple_transformer"])
def test_train_configs_compose(group):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"train={group}", "train.embed_size=32"])
    d = OmegaConf.to_container(cfg, resolve=True)
    spec = train_spec_from_dict(d["train"])
    assert spec.arch == group and d["dataset"]["split"] == "train"
    if group != "simple_transformer":
        assert spec.name == f"{group}-e32"
        assert (spec.hidden_size, spec.epochs, spec.batch_size, spec.lr, spec.dropout) == (128, 5, 20, 1e-3, 0.2)


def test_train_cli(tmp_path, text_dataset):
    out = tmp_path / "cli-model"
    cmd = [sys.executable, "-m", "pipeline.train", "train=gru", "train.embed_size=8", "train.epochs=1",
           "train.batch_size=4", "train.vocab_min_freq=1", "dataset=text_file", f"dataset.path={text_dataset.path}",
           "dataset.split=train", f"out={out}", "progress=false", f"hydra.run.dir={tmp_path / 'run'}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "config.json").exists() and json.loads((out / MARKER).read_text())["arch"] == "gru"


def test_a_trained_model_is_reused_only_for_the_settings_it_was_trained_with(tmp_path, text_dataset):
    """Rerunning a training command reuses the model; the same command with another setting that changes what
    is learnt is a one-line TrainConfigError naming the setting (never a stale model); settings of where it runs
    (device) do not count; overwrite=true retrains."""
    out = tmp_path / "m"

    def cli(*extra):
        cmd = [sys.executable, "-m", "pipeline.train", "train=lstm", "train.embed_size=8", "train.hidden_size=16",
               "train.epochs=1", "train.batch_size=4", "train.vocab_min_freq=1", "dataset=text_file",
               f"dataset.path={text_dataset.path}", "dataset.split=train", f"out={out}", "progress=false",
               f"hydra.run.dir={tmp_path / 'run'}", *extra]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)

    assert cli().returncode == 0
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    r = cli()
    assert r.returncode == 0 and "reusing it" in r.stdout + r.stderr
    r = cli("train.device=cpu")
    assert r.returncode == 0 and (out / "model.safetensors").stat().st_mtime_ns == stamp
    r = cli("train.lr=0.01")
    assert r.returncode == 1 and (out / "model.safetensors").stat().st_mtime_ns == stamp
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("TrainConfigError: ") and "train.lr: 0.001 there, 0.01 now" in lines[-1]
    assert "overwrite=true" in lines[-1]
    r = cli("train.lr=0.01", "overwrite=true")
    assert r.returncode == 0 and (out / "model.safetensors").stat().st_mtime_ns != stamp
    assert json.loads((out / MARKER).read_text())["config"]["train"]["lr"] == 0.01
