"""The README's Python code blocks run as written, so they cannot rot.

Each ```python block is executed on its own (a fresh namespace: every name it uses must be defined in it) with
the working directory at a temporary root holding small synthetic stores laid out exactly like those the
README's commands write: `make demo` (stores/demo/wiki_vital/{valid,test}/<model>/<setting-tag>.zarr, with the
demo's model names) and the task extraction the task snippet names (stores/arc_easy/{validation,test}/...).
"""

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.store.paths import setting_tag, store_path
from pipeline.store.synthetic import (
    random_distributions,
    random_task,
    write_store_from_logprobs,
    write_task_store_from_logprobs,
)

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)

# What `make demo` writes: two tokenizer families (conf/experiment/demo_*.yaml, Makefile's demo target)
DEMO_FAMILIES = {
    "smollm2": [("smollm2-135m-gguf", 135_000_000), ("simple-transformer-smollm2", 2_000_000)],
    "lstm-vocab": [("lstm-e512", 8_000_000), ("lstm-e128", 2_000_000), ("lstm-e32", 400_000)],
}
# ... and another tokenizer on the same text (the word-level snippet): stores with the word arrays
WORD_MODELS = ("smollm2-135m-gguf", "simple-transformer-gpt2")
DEMO_IMAGES = [("resnet-digits-w16", 21_914), ("resnet-digits-w8", 6_226), ("resnet-digits-w4", 1_934)]
DEMO_PROTEINS = [("esm-medium", 418_000), ("esm-small", 107_000), ("esm-tiny", 15_000)]
TASK_MODELS = [("gpt2-xl", 1_557_611_200), ("gpt2", 124_439_808)]
DEMO_TAG = setting_tag(128, 128, 64, "float16", "float32")  # K=64 as conf/extract/default.yaml (the demo's)
TASK_TAG = setting_tag(128, 128, 8, "float16", "float32") + "-lmeval"  # extract.top_k=8 as the README's command


def _demo_stores(root: Path) -> None:
    rng = np.random.default_rng(0)
    for tokenizer, models in DEMO_FAMILIES.items():
        for split in ("valid", "test"):
            # more positions than the snippets read, 30 documents: enough for a bootstrap by document
            targets, lps = random_distributions(1200, 100, rng, n_models=len(models) + 1)
            doc_id = np.arange(targets.size) // 40
            words = {"word_start": (rng.random(targets.size) < 0.3).astype(np.uint8)}
            for (model, params), lp in zip(models + [("simple-transformer-gpt2", 7_000_000)], lps):
                if tokenizer != "smollm2" and model == "simple-transformer-gpt2":
                    continue
                extra = ({**words, "bow_logmass": np.log(rng.uniform(0.05, 0.9, targets.size))}
                         if model in WORD_MODELS else None)
                write_store_from_logprobs(store_path(root / "stores/demo", "wiki_vital", split, model, DEMO_TAG),
                                          lp, targets, 64, model=model, n_params=params, doc_id=doc_id,
                                          dataset="wiki_vital", split=split, extra=extra,
                                          tokenizer="gpt2" if model == "simple-transformer-gpt2" else tokenizer)
    for split in ("valid", "test"):
        targets, lps = random_distributions(300, 10, rng, n_models=3)
        for (model, params), lp in zip(DEMO_IMAGES, lps):
            write_store_from_logprobs(store_path(root / "stores/demo", "mnist_digits", split, model, "k10"),
                                      lp, targets, 10, "float32", model=model, n_params=params,
                                      doc_id=np.arange(300), kind="classification", dataset="mnist_digits",
                                      split=split, tokenizer="digits-labels")
        doc, index = np.repeat(np.arange(40), 6), np.tile(np.arange(0, 30, 5), 40)
        targets, lps = random_distributions(doc.size, 33, rng, n_models=3)
        for (model, params), lp in zip(DEMO_PROTEINS, lps):
            write_store_from_logprobs(store_path(root / "stores/demo", "proteins_demo", split, model, "masked"),
                                      lp, targets, 33, "float32", model=model, n_params=params, doc_id=doc,
                                      kind="masked", extra={"token_index": index}, dataset="proteins_demo",
                                      split=split, tokenizer="esm")


def _task_stores(root: Path) -> None:
    rng = np.random.default_rng(1)
    for split in ("validation", "test"):
        t = random_task("multiple_choice", 16, rng)
        for (model, params), lp in zip(TASK_MODELS, t["logprobs"]):
            write_task_store_from_logprobs(store_path(root / "stores", "arc_easy", split, model, TASK_TAG),
                                           lp, t["targets"], t["item_id"], t["option_id"], t["tables"],
                                           "multiple_choice", 8, model=model, n_params=params,
                                           n_chars=t["n_chars"], n_bytes=t["n_bytes"], dataset="arc_easy",
                                           split=split, tokenizer="gpt2")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    _demo_stores(root)
    _task_stores(root)
    return root


def test_the_readme_has_the_python_blocks_this_test_runs():
    joined = "\n".join(BLOCKS)
    assert len(BLOCKS) >= 3
    for name in ("open_store", "analysis.Pair", "analysis.TaskPair", "heldout", "analysis.bootstrap"):
        assert name in joined, name
    assert "..." not in joined.replace('"..."', "")  # no path placeholders left in code


@pytest.mark.parametrize("i", range(len(BLOCKS)), ids=lambda i: f"block{i + 1}")
def test_readme_python_block_runs_as_written(i, root, monkeypatch):
    monkeypatch.chdir(root)
    namespace = {"__name__": "__readme__"}
    exec(compile(BLOCKS[i], f"README.md python block {i + 1}", "exec"), namespace)
