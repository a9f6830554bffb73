"""Logs say each thing once, with a count, and only when it is true (issue 12): a pinned dataset is not called
unpinned, the tokenizer round-trip caveat is said once per run with how many texts it concerns, and a reused
model is not reported as saved."""

import json
import logging

from pipeline import logs
from pipeline.extraction.config import DatasetSpec
from pipeline.extraction.datasets import load_documents, text_sha256
from pipeline.extraction.stream import Protocol, build_stream
from pipeline.training.config import train_spec_from_dict
from pipeline.training.run import MARKER, train
from pipeline.training.wordlevel import build_word_tokenizer

TEXTS = ["The cat sat on the mat .", "A dog , a cat ; the end !", "Cat  and   dog"]


def _spec(path, n_documents=None, pinned=None) -> DatasetSpec:
    return DatasetSpec(name="toy", split="test", loader="text_file", path=str(path), n_documents=n_documents,
                       text_sha256={"test": pinned} if pinned else {})


def test_pinned_text_is_never_called_unpinned(tmp_path, caplog):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    digest = load_documents(_spec(path)).meta["text_sha256"]
    caplog.set_level(logging.INFO)
    caplog.clear()
    load_documents(_spec(path, pinned=digest))                 # pinned and checked
    load_documents(_spec(path, n_documents=2, pinned=digest))  # pinned, a capped subset (not checked)
    assert "not pinned" not in caplog.text
    load_documents(_spec(path))
    assert caplog.text.count("not pinned in the config yet") == 1
    assert load_documents(_spec(path, n_documents=2)).meta["text_sha256"] == text_sha256(TEXTS[:2])  # capped


def test_round_trip_caveat_is_said_once_per_run_with_a_count(caplog, monkeypatch):
    monkeypatch.setattr(logs, "_said", set())
    tok = build_word_tokenizer(TEXTS * 2, min_freq=1)  # word level: decode joins words with single spaces
    protocol = Protocol(scoring="independent", bos="none", context_length=16, stride=16)
    caplog.set_level(logging.WARNING)
    for _ in range(3):  # a multirun: three extractions in one process
        stream = build_stream(TEXTS, tok, protocol, None)
        assert not stream.exact_alignment
    said = [r.getMessage() for r in caplog.records if "decode(encode(text)) != text" in r.getMessage()]
    assert len(said) == 1 and " for 1 of 3 texts " in said[0], said  # the runs of spaces come back as one


def test_a_reused_model_is_not_reported_saved(tmp_path, caplog):
    out = tmp_path / "lstm-e32"
    out.mkdir()
    (out / MARKER).write_text("{}")
    spec = train_spec_from_dict({"name": "lstm-e32", "arch": "lstm", "embed_size": 32})
    caplog.set_level(logging.INFO)
    assert train(spec, None, out) == out  # returns before any data or model is loaded
    assert "reusing" in caplog.text and "saved" not in caplog.text
