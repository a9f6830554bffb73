"""Token stream, windows and n_chars/n_bytes (DESIGN section 2, issue 3 item 2)."""

import numpy as np
import pytest
from extract_helpers import make_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.extraction.errors import ConfigError, EmptyDatasetError
from pipeline.extraction.stream import Protocol, _byte_offsets, build_stream, make_windows

DOCS = ["Hello world. Émigrés café 東京 🙂 end.", "", "Second document\n\nwith two paragraphs.  ",
        "x", "Third: numbers 12,345.678 and more text to make windows."]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 60), min_size=1, max_size=5), L=st.integers(1, 20), data=st.data())
def test_windows_score_every_target_exactly_once(lengths, L, data):
    S = data.draw(st.integers(1, L))
    scored = [np.r_[False, np.ones(max(T - 1, 0), bool)] if T else np.zeros(0, bool) for T in lengths]
    w = make_windows(lengths, scored, Protocol(context_length=L, stride=S))
    seen = {i: np.zeros(T, int) for i, T in enumerate(lengths)}
    for i in range(len(w)):
        a, c, d = w.a[i], w.c[i], w.d[i]
        assert 0 <= a < c < d <= lengths[w.seg[i]]
        assert d - 1 - a <= L                          # at most L inputs
        if c > 1:
            assert c - a >= min(L - S + 1, c)          # context of the first new target
        seen[w.seg[i]][c:d] += 1
    for i, T in enumerate(lengths):
        assert np.all(seen[i][1:] == 1) and (T == 0 or seen[i][0] == 0)
    assert w.n_positions == sum(max(T - 1, 0) for T in lengths)
    np.testing.assert_array_equal(np.diff(w.offset), w.n_targets)


def test_byte_offsets_count_utf8_bytes():
    s = "aé東🙂"
    np.testing.assert_array_equal(_byte_offsets(s), [0, 1, 3, 6, 10])


@pytest.mark.parametrize("scoring,bos", [("independent", "document"), ("independent", "none"),
                                         ("joined", "none"), ("joined", "document")])
def test_n_chars_and_n_bytes_sum_to_the_scored_text(tok, scoring, bos):
    p = Protocol(scoring=scoring, separator="\n\n", bos=bos, context_length=8, stride=4)
    s = build_stream(DOCS, tok, p, bos_id=tok.bos_token_id)
    assert s.exact_alignment  # byte-level BPE: decode round trip verified
    nc = np.concatenate([x.n_chars[x.scored] for x in s.segments])
    nb = np.concatenate([x.n_bytes[x.scored] for x in s.segments])
    assert np.all(nc >= 0) and np.all(nb >= nc)
    if scoring == "joined":
        text = "\n\n".join(DOCS)
        assert nc.sum() == len(text) and nb.sum() == len(text.encode())
    else:
        # without BOS a one-token document has nothing scored, and its text is not counted
        counted = [d for d in DOCS if len(tok(d, add_special_tokens=False).input_ids) >= (1 if bos == "document" else 2)]
        assert nc.sum() == sum(map(len, counted)) and nb.sum() == sum(len(d.encode()) for d in counted)
    bos_positions = np.concatenate([x.seq == tok.bos_token_id for x in s.segments])
    scored = np.concatenate([x.scored for x in s.segments])
    assert not np.any(bos_positions & scored)  # BOS is context, never a target
    n_bos = int(bos_positions.sum())
    n_docs = len(np.unique(np.concatenate([x.doc_id for x in s.segments])))  # documents holding a token
    assert n_bos == (n_docs if bos == "document" else 0)  # per document, never per window


def test_doc_ids_follow_documents_in_joined_mode(tok):
    s = build_stream(["aaa bbb", "ccc ddd", "eee"], tok, Protocol(scoring="joined", separator=" | ", bos="none"), None)
    d = s.segments[0].doc_id[s.segments[0].scored]
    assert list(np.unique(d)) == [0, 1, 2] and np.all(np.diff(d) >= 0)


def test_n_chars_spans_decode_to_the_text(tok):
    text = "Hello world. Émigrés café 東京 🙂 end."
    s = build_stream([text], tok, Protocol(scoring="independent", bos="document"), tok.bos_token_id)
    seg = s.segments[0]
    ends = np.cumsum(seg.n_chars[seg.scored])
    # every target's span ends where the decoded prefix ends (byte-level: exact)
    for j, e in zip(np.flatnonzero(seg.scored), ends):
        prefix = tok.decode(seg.seq[1:j + 1].tolist())
        if "\ufffd" not in prefix:  # a multi-byte character split across tokens
            assert prefix == text[:e] or e == len(text)


def test_empty_and_bad_protocols_raise_typed_errors(tok):
    with pytest.raises(EmptyDatasetError):
        build_stream(["", ""], tok, Protocol(), tok.bos_token_id)
    with pytest.raises(EmptyDatasetError, match="at least two tokens"):
        build_stream(["x"], tok, Protocol(bos="none"), None)
    with pytest.raises(ConfigError, match="stride"):
        Protocol(context_length=4, stride=5)
    with pytest.raises(ConfigError, match="scoring"):
        Protocol(scoring="rolling")
    with pytest.raises(ConfigError, match="BOS"):
        build_stream(["abc"], tok, Protocol(bos="document"), None)
