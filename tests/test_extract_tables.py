"""Extraction's optional tables: the vocabulary strings and the input embedding matrix."""

import numpy as np
from extract_helpers import make_model, write_jsonl

from pipeline.extraction.config import DatasetSpec, ExtractSpec, ModelSpec, RunSpec
from pipeline.extraction.models import load_model
from pipeline.extraction.run import extract


def test_vocab_and_embedding_tables(tmp_path):
    model_dir = make_model(tmp_path / "neox", "gpt_neox", max_len=64)  # logits wider than the tokenizer
    data = write_jsonl(tmp_path / "d.jsonl", ["A small document about cats and dogs.", "Another one."])
    spec = RunSpec(model=ModelSpec(name="neox", name_or_path=str(model_dir), device="cpu"),
                   dataset=DatasetSpec(name="docs", split="test", loader="text_file", path=str(data)),
                   extract=ExtractSpec(top_k=8, context_length=32, progress=False, store_embedding=True),
                   store=str(tmp_path / "out.zarr"), stores_root=str(tmp_path), overwrite=False, resolved={})
    lm = load_model(spec.model)
    store = extract(spec, lm)
    vocab = store.table("vocab")
    assert len(vocab) == store.n_classes
    n_tok = len(lm.tokenizer)
    assert store.n_classes > n_tok and all(v == "" for v in vocab[n_tok:])
    for i in (0, 5, n_tok - 1):
        assert vocab[i] == lm.tokenizer.decode([i], clean_up_tokenization_spaces=False)
    emb = store.table("embedding")
    want = lm.model.get_input_embeddings().weight.detach().float().numpy()[: store.n_classes]
    np.testing.assert_array_equal(emb, want)
    # the texts of the targets, joined, read back without any tokenizer
    text = "".join(vocab[store.read(["targets"])["targets"]])
    assert "small document about cats and dogs." in text and "Another one." in text
