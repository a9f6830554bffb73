"""Word-level fusion end to end: two tiny random-init GPT-2-shaped models on two different tokenizers (byte-level
BPE behind the Llama-3 regex, and SentencePiece-style BPE as Llama-2's) extracted by the pipeline on one text with
awkward whitespace, punctuation and non-ASCII, against a brute force that runs the models itself in float64 over
their full distributions, tokenises the text itself, cuts the words from the text and computes the fused NLL in
mpmath: no code shared with analysis.words or the extraction's word arrays."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import reference_words as rw
import tokenizer_families as tf
import torch
from extract_helpers import write_jsonl

from analysis import WordPair
from pipeline.extraction.config import DatasetSpec, ExtractSpec, ModelSpec, RunSpec
from pipeline.extraction.run import extract

TEXTS = ["The cat sat.  Then,  it ran away!  Naïve café in Zürich, 1,234.56 € ok?",
         "  Москва и 東京 — emoji 🙂 x y🙂 z (paren) [b]; end",
         "one",
         "Lines\nbreak here\n\nand a tab\tthere, won't it's fine. 42x 7 up.down"]


def _model_dir(root, family: str, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tf.build(family)
    d = root / family
    tok.save_pretrained(d)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2, initializer_range=0.5,
                     bos_token_id=tok.bos_token_id or 0, eos_token_id=tok.eos_token_id or 0)
    GPT2LMHeadModel(cfg).save_pretrained(d)
    return d, tok


def _space_initial(tok) -> np.ndarray:
    """Ids whose text begins with a space, from the vocabulary's own spelling (byte-level 'Ġ', SentencePiece '▁',
    its byte-fallback <0x20>); special tokens never."""
    special = set(tok.all_special_ids)
    out = np.zeros(len(tok), bool)
    for i in range(len(tok)):
        p = tok.convert_ids_to_tokens(i)
        out[i] = i not in special and (p.startswith(("Ġ", "▁")) or p == "<0x20>")
    return out


@torch.no_grad()
def _brute_segments(model_dir, tok) -> list[list[tuple[mp.mpf, int]]]:
    """Per document: [(log p(word), bytes)] for every word cut from the text, from float64 full distributions."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir).double().eval()
    space = _space_initial(tok)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    out = []
    for text in TEXTS:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, raw = enc["input_ids"], enc["offset_mapping"]
        ends = np.maximum.accumulate([e for _, e in raw])
        # a token starts where the previous one ends, unless it is a later byte piece of the character the previous
        # token began (byte-level BPE splits multi-byte characters: the pieces share the character's offsets)
        starts = np.concatenate([[0], ends[:-1]])
        for i in range(1, len(ids)):
            if raw[i][0] < ends[i - 1]:
                starts[i] = starts[i - 1]
        lp = torch.log_softmax(model(torch.tensor([[bos] + ids])).logits[0, :-1], -1).numpy()
        with mp.workdps(40):
            tok_lp = [mp.mpf(float(lp[i, t])) for i, t in enumerate(ids)]
            bow = [mp.log(mp.fsum(mp.exp(mp.mpf(float(x))) for x in lp[i, space])) for i in range(len(ids))]
            words = rw.word_spans(text)
            members = [[i for i in range(len(ids)) if a <= starts[i] < b] for a, b in words]
            segs = []
            for k, ((a, b), m) in enumerate(zip(words, members)):
                lw = mp.fsum(tok_lp[i] for i in m) - (bow[m[0]] if k else 0)
                lw += bow[members[k + 1][0]] if k + 1 < len(words) else 0
                segs.append((lw, len(text[a:b].encode())))
            out.append(segs)
    return out


@pytest.mark.slow
def test_pipeline_stores_fuse_at_the_word_level_like_the_brute_force(tmp_path):
    data = write_jsonl(tmp_path / "docs.jsonl", TEXTS)
    stores, brute = [], []
    for family, seed, name in (("llama3", 0, "bpe"), ("llama2", 1, "spm")):
        d, tok = _model_dir(tmp_path / "models", family, seed)
        spec = RunSpec(model=ModelSpec(name=name, name_or_path=str(d), device="cpu"),
                       dataset=DatasetSpec(name="docs", split="test", loader="text_file", path=str(data)),
                       extract=ExtractSpec(top_k=8, context_length=120, stride=120, progress=False,
                                           logprob_dtype="float32", word_arrays=True),
                       store=str(tmp_path / f"{name}.zarr"), stores_root=str(tmp_path), overwrite=False,
                       resolved={"test": True})
        stores.append(extract(spec))
        brute.append(_brute_segments(d, tok))
    wp = WordPair(*stores, order="given")
    la = [x[0] for doc in brute[0] for x in doc]
    lb = [x[0] for doc in brute[1] for x in doc]
    assert [x[1] for doc in brute[0] for x in doc] == [x[1] for doc in brute[1] for x in doc]
    assert wp.data.n == len(la) and wp.data.n_bytes.tolist() == [x[1] for doc in brute[0] for x in doc]
    # float32 forward and storage against a float64 forward: 1e-4 per token is ample
    np.testing.assert_allclose(wp.data.la, [float(x) for x in la], atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(wp.data.lb, [float(x) for x in lb], atol=1e-3, rtol=1e-5)
    frame = wp.sweep(np.array([0.0, 0.1, 0.5, 0.9, 1.0]))
    for w, got in zip(frame["w"], frame["nll"]):
        with mp.workdps(40):
            want = -mp.fsum(mp.log(w * mp.exp(x) + (1 - w) * mp.exp(y)) for x, y in zip(la, lb))
        assert abs(got - float(want)) <= 1e-4 * len(la) + 1e-6 * abs(float(want))
    nbytes = sum(len(t.encode()) for t in TEXTS)
    assert wp.data.n_bytes.sum() == nbytes
    assert frame["bpb"][-1] == pytest.approx(float(-mp.fsum(la)) / math.log(2) / nbytes, rel=1e-5)
    opt = wp.optimum()
    assert 0.0 <= opt.w_nll <= 1.0 and opt.at_nll["nll"] <= frame["nll"].min() + 1e-9
