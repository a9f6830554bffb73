"""Nothing lost, nothing silently wrong (issue 11, reader side): missing chunks, edited metadata, swapped or
altered chunks and unparsable zarr.json are typed errors or verify failures, never fill values or a crash; and
commands that walk many stores report the damaged one and go on. The review's cases are named regression tests."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_analysis_pair import _write_family

from analysis import Pair
from analysis.sweep import AnalyzeSettings, run
from pipeline import stores as cli
from pipeline.store import (
    CorruptStoreError,
    MetadataMismatchError,
    MisplacedChunkError,
    MissingChunkError,
    StoreError,
    check_digests,
    chunk_digests,
    open_store,
    verify_store,
)
from pipeline.store.synthetic import random_distributions, write_store_from_logprobs

GRID = np.linspace(0, 1, 11)


@pytest.fixture
def family(tmp_path):
    """big, mid, small on one stream: N = 300 in chunks of 64 (5 chunks, the last partial)."""
    return _write_family(tmp_path / "stores", seed=0, split="test")


def _vocab_store(path, n=200, vocab=40):
    targets, (lp, _) = random_distributions(n, vocab, np.random.default_rng(0), n_models=2)
    words = np.array([f"tok{i}" if i % 7 else f"ü{i} " for i in range(vocab)])
    emb = np.random.default_rng(1).standard_normal((vocab, 3)).astype(np.float16)
    store = write_store_from_logprobs(path, lp, targets, 4, chunk_size=64, model="m",
                                      tables={"vocab": words, "embedding": emb, "zeros": np.zeros(5, np.int32)})
    return store, targets, words


def _edit_json(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------- missing chunk files
def test_regression_missing_chunk_file_is_an_error_naming_array_and_chunk_not_fill_values(family):
    """Review: a deleted chunk file read as zeros gave PPL 1531.62 instead of 2021.24, without a warning."""
    big, mid, _ = family
    (big / "topk_logprobs" / "c" / "2" / "0").unlink()
    with pytest.raises(MissingChunkError, match=r"'topk_logprobs' lacks chunk 2 \(rows 128..192") as e:
        Pair(big, mid)
    assert (e.value.array, e.value.chunk) == ("topk_logprobs", 2)
    assert isinstance(e.value, CorruptStoreError)


def test_chunk_deleted_after_open_is_caught_by_the_read(family):
    big, mid, _ = family
    pair = Pair(open_store(big), open_store(mid))
    (mid / "tail_logmass" / "c" / "4").unlink()  # the last, partial chunk
    with pytest.raises(MissingChunkError, match="'tail_logmass' lacks chunk 4") as e:
        pair.sweep(GRID)
    assert e.value.chunk == 4


def test_partial_store_checks_only_written_chunks(family, tmp_path):
    from pipeline.store import StoreWriter
    from pipeline.store.synthetic import arrays_from_logprobs, synthetic_attrs

    targets, (lp, _) = random_distributions(200, 40, np.random.default_rng(0), n_models=2)
    arrays = arrays_from_logprobs(lp, targets, 4)
    w = StoreWriter(tmp_path / "p.zarr", n_positions=200, top_k=4, n_classes=40, attrs=synthetic_attrs("m"),
                    setting_hash="h", chunk_size=64)
    w.write(0, **{k: v[:130] for k, v in arrays.items()})
    w.abort()
    s = open_store(tmp_path / "p.zarr", allow_partial=True)
    assert s.n_valid == 128
    np.testing.assert_array_equal(s.read(["targets"])["targets"], targets[:128])
    (tmp_path / "p.zarr" / "targets" / "c" / "1").unlink()
    with pytest.raises(MissingChunkError, match="'targets' lacks chunk 1"):
        open_store(tmp_path / "p.zarr", allow_partial=True)


def test_missing_table_chunk_with_a_recorded_digest_is_an_error(tmp_path):
    store, _, words = _vocab_store(tmp_path / "v.zarr")
    assert store.attrs["chunk_digests"]["zeros"] == [None]  # an all-fill table chunk has no file: not damage
    np.testing.assert_array_equal(open_store(store.path).table("zeros"), np.zeros(5, np.int32))
    s = open_store(store.path)
    (store.path / "vocab" / "c" / "0").unlink()
    with pytest.raises(MissingChunkError, match="'vocab' lacks chunk 0"):
        s.table("vocab")
    with pytest.raises(MissingChunkError, match="'vocab'"):
        open_store(store.path)


def test_unreadable_chunk_is_a_typed_error_naming_the_chunk(family):
    big, _, _ = family
    chunk = big / "topk_logprobs" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    s = open_store(big)  # opening lists files, it does not read them
    with pytest.raises(CorruptStoreError, match=r"'topk_logprobs', chunk 1: unreadable") as e:
        s.read(["topk_logprobs"], 10, 150)
    assert e.value.array == "topk_logprobs"
    with pytest.raises(CorruptStoreError, match=r"'topk_logprobs', chunk 1: unreadable"):
        list(s.iter_chunks(["topk_logprobs"]))


# ------------------------------------------------------------------------------------- metadata vs arrays
def test_regression_edited_top_k_is_a_typed_error(family):
    """Review: top_k edited in zarr.json went unnoticed by the analysis (ppl = inf)."""
    big, mid, _ = family
    _edit_json(big / "zarr.json", lambda m: m["attributes"].update(top_k=5))
    with pytest.raises(MetadataMismatchError, match="top_k = 5 but 'topk_ids' holds lists of width 6"):
        open_store(big)
    with pytest.raises(MetadataMismatchError):
        Pair(big, mid)
    assert any("top_k = 5" in p for p in verify_store(big).problems)


@pytest.mark.parametrize("name, dtype", [("topk_logprobs", "float32"), ("targets", "int64"),
                                         ("tail_logmass", "float16")])
def test_regression_edited_array_dtype_is_a_typed_error(family, name, dtype):
    """Review: an array dtype edited in its zarr.json went unnoticed by the analysis."""
    big, mid, _ = family
    _edit_json(big / name / "zarr.json", lambda m: m.update(data_type=dtype))
    with pytest.raises(MetadataMismatchError, match=f"'{name}' has dtype {dtype}"):
        Pair(big, mid)
    report = verify_store(big)
    assert not report.ok and any(f"'{name}' has dtype {dtype}" in p for p in report.problems)


def test_edited_n_positions_chunk_size_and_header_types_are_typed_errors(family):
    big, _, _ = family
    original = (big / "zarr.json").read_text()
    for edit, pattern in (({"n_positions": 299}, r"has shape \(300,\)"),
                          ({"chunk_size": 32}, r"has chunks \(64,\)"),
                          ({"top_k": "6"}, "'top_k' is '6', not a positive integer"),
                          ({"logprob_dtype": "bfloat16"}, "'logprob_dtype' is 'bfloat16'")):
        (big / "zarr.json").write_text(original)
        _edit_json(big / "zarr.json", lambda m: m["attributes"].update(edit))  # noqa: B023
        with pytest.raises(MetadataMismatchError, match=pattern):
            open_store(big)


# ------------------------------------------------------------------------------------- digests and verify
def test_digests_are_recorded_for_every_chunk_and_table(tmp_path):
    store, targets, _ = _vocab_store(tmp_path / "v.zarr")
    d = store.attrs["chunk_digests"]
    assert set(d) == set(store.names) | {"vocab", "embedding", "zeros"}
    assert all(len(d[n]) == 4 for n in store.names)  # 200 positions in chunks of 64
    # independent of the code: sha256 over the dtype, the shape, then the little-endian values
    want = hashlib.sha256(b"<i4(64,)" + targets[64:128].astype("<i4").tobytes()).hexdigest()
    assert d["targets"][1] == want
    want_last = hashlib.sha256(b"<i4(8,)" + targets[192:].astype("<i4").tobytes()).hexdigest()
    assert d["targets"][3] == want_last
    assert chunk_digests(store.group) == d
    assert check_digests(store) == []
    report = verify_store(store.path)
    assert report.ok and not report.warnings, report.problems


def test_regression_swapped_chunk_files_fail_verify_naming_them(family, capsys):
    """Review: verify missed two swapped chunk files (each passes its own checksum)."""
    big, _, _ = family
    c = big / "topk_logprobs" / "c"
    a, b = c / "0" / "0", c / "1" / "0"
    tmp = a.with_name("swap")
    a.rename(tmp), b.rename(a), tmp.rename(b)
    report = verify_store(big)
    assert not report.ok
    assert "array 'topk_logprobs' chunk 0 (rows 0..64) holds the data recorded for chunk 1: chunk files swapped" \
        in "\n".join(report.problems)
    assert any("chunk 1 (rows 64..128) holds the data recorded for chunk 0" in p for p in report.problems)
    assert cli.main(["verify", str(big)]) == 1
    assert "0 of 1 stores ok" in capsys.readouterr().out


def test_regression_flipped_byte_in_vocabulary_table_fails_verify(tmp_path):
    """Review: verify missed a flipped byte in the vocabulary table (string tables carried no checksum).

    String tables now carry a crc32c like every chunk, checked before the string decoder reads the item count (a
    flipped count made numcodecs allocate GBs): every single flipped byte is reported corrupt, naming the table and
    chunk. A chunk that decodes but holds other strings (rewritten behind the writer's back) fails its digest."""
    store, _, words = _vocab_store(tmp_path / "v.zarr")
    chunk = store.path / "vocab" / "c" / "0"
    original = chunk.read_bytes()
    for i in range(len(original)):
        data = bytearray(original)
        data[i] ^= 0x01
        chunk.write_bytes(bytes(data))
        with pytest.raises(CorruptStoreError) as e:
            open_store(store.path, check=False).table("vocab")  # opening is not under test here
        assert e.value.array == "vocab"
    problems = verify_store(store.path).problems
    assert len(problems) == 1 and "array 'vocab' chunk 0" in problems[0] and "is corrupt" in problems[0], problems
    chunk.write_bytes(original)
    zarr.open_array(store.path / "vocab", mode="r+")[:2] = np.array(["x", "y"])  # valid chunk, other strings
    problems = verify_store(store.path).problems
    assert len(problems) == 1 and "array 'vocab' chunk 0" in problems[0], problems
    assert "differs from its recorded digest: the data was altered" in problems[0]
    chunk.write_bytes(original)
    assert verify_store(store.path).ok


def test_store_without_digests_verifies_with_a_warning(family, capsys):
    big, _, _ = family
    _edit_json(big / "zarr.json", lambda m: m["attributes"].pop("chunk_digests"))
    report = verify_store(big)
    assert report.ok and any("no digests recorded" in w for w in report.warnings)
    assert cli.main(["verify", str(big)]) == 0
    out = capsys.readouterr().out
    assert "warning: no digests recorded" in out and "1 of 1 stores ok (1 with warnings)" in out


def test_verify_reports_missing_chunks_with_their_indices(family):
    big, _, _ = family
    (big / "n_bytes" / "c" / "1").unlink()
    (big / "n_bytes" / "c" / "3").unlink()
    report = verify_store(big)
    assert any("'n_bytes': 2 of its 5 written chunks are missing: chunks [1, 3]" in p for p in report.problems)


# ------------------------------------------------------------------------------------- unparsable metadata
def _damage_group_json(path: Path) -> None:
    (path / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {"top_k": ')


def test_regression_invalid_zarr_json_is_a_typed_error_naming_the_file(family):
    """Review: an invalid zarr.json raised a raw JSONDecodeError."""
    big, mid, _ = family
    _damage_group_json(big)
    with pytest.raises(CorruptStoreError, match="cannot parse .*big.zarr/zarr.json") as e:
        open_store(big)
    assert e.value.file == big / "zarr.json"
    (mid / "entropy" / "zarr.json").write_text("{")
    with pytest.raises(CorruptStoreError, match="cannot parse .*mid.zarr/entropy/zarr.json"):
        open_store(mid)


def test_regression_stores_ls_and_verify_go_on_past_a_damaged_store(family, capsys):
    """Review: `stores ls ROOT` listed nothing and `verify ROOT` stopped without a summary."""
    big, mid, small = family
    root = big.parents[2]
    _damage_group_json(big)
    (small / "targets" / "c" / "0").unlink()
    assert cli.main(["ls", str(root)]) == 1
    out, err = capsys.readouterr()
    assert "mid" in out and "complete" in out and out.count("unreadable") == 2
    assert f"damaged  {big}: CorruptStoreError" in err and f"damaged  {small}: MissingChunkError" in err
    assert cli.main(["verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"ok       {mid}" in out and f"FAILED   {big}" in out and f"FAILED   {small}" in out
    assert "1 of 3 stores ok" in out


def test_regression_sweep_skips_a_damaged_store_and_still_writes_the_table(family, tmp_path):
    """Review: `analysis.sweep` aborted on one damaged store."""
    big, mid, small = family
    root = big.parents[2]
    _write_family(root, seed=1, split="validation")
    _damage_group_json(big)
    (root / "synthetic" / "validation" / "small.zarr" / "topk_ids" / "c" / "3" / "0").unlink()
    frames = run(AnalyzeSettings(stores=root, out_dir=tmp_path / "run", n_weights=5))
    pairs = frames["pairs"]
    assert set(zip(pairs["primary"], pairs["secondary"], pairs["split"])) == {
        ("mid", "small", "test"), ("big", "mid", "validation")}
    reasons = dict(zip(frames["skipped"]["a"], frames["skipped"]["reason"]))
    assert "cannot parse" in reasons[str(big)]
    assert "'topk_ids' lacks chunk 3" in reasons[str(root / "synthetic" / "validation" / "small.zarr")]
    table = (tmp_path / "run" / "table.md").read_text()
    assert "## Skipped" in table and "| mid | small |" in table


def test_law_discovery_skips_a_damaged_store(family):
    from analysis.law import _groups

    big, mid, small = family
    _damage_group_json(big)
    groups, skipped = _groups(big.parents[2])
    assert [sorted(s.model["name"] for s in g) for g in groups.values()] == [["mid", "small"]]
    assert skipped == [{"store": str(big), "reason": skipped[0]["reason"]}] and "cannot parse" in skipped[0]["reason"]


def test_corrupt_store_error_is_a_store_error():
    assert issubclass(MissingChunkError, StoreError) and issubclass(MetadataMismatchError, CorruptStoreError)


def test_damaged_copy_does_not_touch_the_original(family, tmp_path):
    """Checks only read: a failing open leaves every file in place."""
    big, _, _ = family
    copy = tmp_path / "copy.zarr"
    shutil.copytree(big, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    (copy / "targets" / "c" / "0").unlink()
    with pytest.raises(MissingChunkError):
        open_store(copy)
    assert verify_store(copy).problems
    after = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    assert set(before) - set(after) == {Path("targets/c/0")}


def test_sweep_skips_a_pair_whose_chunk_is_found_corrupt_on_reading(family, tmp_path):
    """A checksum failure is seen only when the data is read (opening lists files): the pair is skipped."""
    big, mid, small = family
    chunk = mid / "topk_logprobs" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    frames = run(AnalyzeSettings(stores=big.parents[2], out_dir=tmp_path / "run", n_weights=5))
    assert list(zip(frames["pairs"]["primary"], frames["pairs"]["secondary"])) == [("big", "small")]
    skipped = frames["skipped"]
    assert skipped.height == 2 and skipped["reason"].str.contains("'topk_logprobs', chunk 1: unreadable").all()


def test_law_skips_a_pair_whose_chunk_is_found_corrupt_on_reading(family, tmp_path):
    """As the sweep: a checksum failure seen only when a pair's data is read skips that pair, and the law run goes
    on with the others and lists the skipped ones."""
    from analysis.law import LawSettings
    from analysis.law import run as law_run

    big, mid, small = family
    chunk = mid / "topk_logprobs" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    frames = law_run(LawSettings(stores=big.parents[2], out_dir=tmp_path / "law", n_resamples=0, rbp_ks=(1,),
                                 multi=False, plots=False))
    done = set(zip(frames["points"]["primary"], frames["points"]["secondary"]))
    assert done == {("big", "small")}
    reasons = frames["skipped"]["reason"].to_list()
    assert sum("'topk_logprobs', chunk 1" in r for r in reasons) == 2, reasons


@pytest.mark.parametrize("name", ["target_logprob", "topk_ids", "targets"])
def test_regression_swapped_chunks_are_refused_by_the_analysis_not_fused(family, name):
    """Found by `make reliability`: two swapped `target_logprob` chunk files each pass their crc32c, both models
    still agree on the targets, so `Pair` fused them into wrong numbers. Every open now compares each chunk file's
    crc32c with the one recorded at completion."""
    big, mid, _ = family
    c = big / name / "c"
    a, b = sorted(p for p in c.rglob("*") if p.is_file())[:2]
    x, y = a.read_bytes(), b.read_bytes()
    a.write_bytes(y)
    b.write_bytes(x)
    with pytest.raises(MisplacedChunkError) as e:
        Pair(big, mid).sweep(GRID)
    assert e.value.array == name and e.value.chunk == 0 and "swapped, replaced or altered" in str(e.value)
    problems = verify_store(big).problems
    assert any("chunk files swapped" in p for p in problems), problems


def test_stores_info_shows_a_store_whose_array_metadata_is_damaged(family, capsys):
    """`stores info` names the damaged array, shows the rest, and exits 1 (it used to crash on the JSON error)."""
    big, _, _ = family
    (big / "targets" / "zarr.json").write_text("{")
    assert cli.main(["info", str(big)]) == 1
    out = capsys.readouterr().out
    assert "targets          damaged:" in out and "cannot parse" in out and "topk_ids" in out
