"""Every named config composes into typed specs (model x dataset), as the CLI would build them."""

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.extraction.config import run_spec_from_dict
from pipeline.extraction.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "hf")
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))


def spec(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("extract", overrides=list(overrides))
    return run_spec_from_dict(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_composes(model):
    s = spec(f"model={model}", "dataset=wiki_vital")
    assert s.model.name and s.model.name_or_path and s.model.trust_remote_code is False
    if "qwen2.5-7b" in model or "qwen2.5-14b" in model:
        assert s.model.quantization == "4bit" and s.model.name.endswith("-4bit")
    if model.endswith("gguf"):
        assert s.model.gguf_file and s.model.cache_dir.endswith(f"_models/{model}")


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_config_composes_with_a_documented_protocol(dataset):
    extra = {"text_file": ["dataset.path=/tmp/x.txt"], "image_folder": ["dataset.path=/tmp/images"],
             "fasta": ["dataset.path=/tmp/x.fasta"]}.get(dataset, [])
    s = spec("model.name_or_path=/tmp/m", f"dataset={dataset}", *extra)
    d = s.dataset
    assert d.scoring in ("independent", "joined") and d.bos in ("document", "none")
    assert d.loader and (d.hub_id or d.url or d.loader in ("text_file", "wiki_vital", "image_folder", "mnist_csv",
                                                            "sklearn_digits", "fasta"))
    assert "Protocol" in (CONF / "dataset" / f"{dataset}.yaml").read_text()
    for split in d.files:  # each split named in the config has a (possibly not yet pinned) sha256 slot
        assert split in d.text_sha256 or split in (d.data_sha256 or {})  # data_sha256: image datasets


def test_the_families_of_the_issue_are_all_named():
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "pythia-14m", "pythia-2.8b", "mamba-130m",
                 "mamba-2.8b", "rwkv4-169m", "rwkv4-430m", "rwkv4-1.5b", "qwen2.5-0.5b", "qwen2.5-14b",
                 "smollm2-135m", "smollm2-360m", "smollm2-1.7b", "smollm2-135m-gguf",
                 *(f"resnet-{d}" for d in (18, 34, 50, 101, 152)), *(f"tv-resnet{d}" for d in (18, 34, 50, 101, 152)),
                 *(f"esm2-{s}" for s in ("8m", "35m", "150m", "650m", "3b"))):
        assert name in MODELS


def test_cli_contract_overrides_and_unknown_keys():
    s = spec("model.name_or_path=/some/dir/my-model", "dataset=text_file", "dataset.path=/f.txt", "extract.top_k=7",
             "extract.context_length=128", "extract.stride=64", "store=/o.zarr")
    assert (s.model.name, s.extract.top_k, s.extract.context_length, s.extract.stride, s.store) == (
        "my-model", 7, 128, 64, "/o.zarr")
    with pytest.raises(ConfigError, match="unknown key"):
        spec("model.name_or_path=x", "+model.nonsense=1")
    assert os.path.isdir(CONF / "paths")
