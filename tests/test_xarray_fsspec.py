"""Stores open with xarray (Zarr dimension names) and from fsspec URLs with the same integrity checks."""

from __future__ import annotations

import numpy as np
import pytest
from polars.testing import assert_frame_equal

from analysis import Pair
from pipeline.store import open_store
from pipeline.store.errors import MissingChunkError, StoreNotFoundError
from pipeline.store.synthetic import write_zipf_pair

fsspec = pytest.importorskip("fsspec")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return write_zipf_pair(tmp_path_factory.mktemp("xr"), 5000, k=4, vocab=200, chunk_size=1000)


def _to_memory(local, url_path):
    fs = fsspec.filesystem("memory")
    if fs.exists(url_path):
        fs.rm(url_path, recursive=True)
    fs.put(str(local), url_path, recursive=True)
    return fs


def test_xarray_opens_a_store(stores):
    xr = pytest.importorskip("xarray")
    pa, _ = stores
    ds = xr.open_zarr(pa, consolidated=False, zarr_format=3)
    assert ds["topk_logprobs"].dims == ("position", "k")
    assert ds["targets"].dims == ("position",)
    s = open_store(pa)
    got = ds["topk_logprobs"].isel(position=slice(1200, 1300)).values
    np.testing.assert_array_equal(got, s.read(["topk_logprobs"], 1200, 1300)["topk_logprobs"])
    np.testing.assert_array_equal(ds["target_logprob"].values, s.read(["target_logprob"])["target_logprob"])


def test_open_store_from_memory_and_file_urls(stores):
    pa, pb = stores
    _to_memory(pa, "/h7/A.zarr")
    _to_memory(pb, "/h7/B.zarr")
    ma = open_store("memory://h7/A.zarr")
    assert open_store("memory://h7/B.zarr").n == 5000
    assert str(ma.path) == "memory://h7/A.zarr" and ma.n == 5000
    fa = open_store(f"file://{pa}")
    for s in (ma, fa):
        np.testing.assert_array_equal(s.read(["topk_ids"], 900, 2100)["topk_ids"],
                                      open_store(pa).read(["topk_ids"], 900, 2100)["topk_ids"])
    w = np.linspace(0, 1, 11)
    assert_frame_equal(Pair("memory://h7/A.zarr", "memory://h7/B.zarr").sweep(w), Pair(pa, pb).sweep(w),
                       check_exact=True)
    assert_frame_equal(Pair("memory://h7/A.zarr", "memory://h7/B.zarr", engine="dask").sweep(w),
                       Pair(pa, pb).sweep(w), check_exact=True)
    with pytest.raises(StoreNotFoundError):
        open_store("memory://h7/nothing.zarr")


def test_missing_chunk_at_a_url_is_caught(stores):
    pa, _ = stores
    fs = _to_memory(pa, "/h7/C.zarr")
    chunk = [f for f in fs.find("/h7/C.zarr/topk_logprobs") if f.rsplit("/", 1)[-1] != "zarr.json"][2]
    fs.rm(chunk)
    with pytest.raises(MissingChunkError, match="topk_logprobs"):
        open_store("memory://h7/C.zarr")
    s = open_store("memory://h7/C.zarr", check=False)  # the per-read check names it too
    with pytest.raises(MissingChunkError, match="lacks chunk"):
        s.read(["topk_logprobs"], 0, 5000)
