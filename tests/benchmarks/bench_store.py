"""Storage figures for tests/benchmarks/store.md: bytes per position, write and read throughput.

Realistic Zipf-shaped top-K log-probs (pipeline.store.synthetic.zipf_blocks, GPT-2-sized vocabulary),
written through the real StoreWriter (Blosc zstd-5 + shuffle, crc32c, 65,536-position chunks).
Throughput counts uncompressed array bytes. Run: make bench-store
"""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.store import StoreWriter
from pipeline.store.synthetic import synthetic_attrs, zipf_blocks

N = 524_288
VOCAB = 50_257
OUT = Path(__file__).with_name("store.md")


def dir_bytes(path: Path) -> dict[str, int]:
    sizes = {}
    for sub in path.iterdir():
        if sub.is_dir():
            sizes[sub.name] = sum(p.stat().st_size for p in sub.rglob("*") if p.is_file())
    return sizes


def run(k: int, dtype: str, root: Path) -> dict:
    blocks = [(start, b[0]) for start, b in zipf_blocks(N, k, VOCAB, seed=1, logprob_dtype=dtype)]
    raw = sum(a.nbytes for _, arrays in blocks for a in arrays.values())
    path = root / f"k{k}-{dtype}.zarr"
    t0 = time.perf_counter()
    w = StoreWriter(path, n_positions=N, top_k=k, n_classes=VOCAB, logprob_dtype=dtype,
                    attrs=synthetic_attrs("zipf-A"), setting_hash="bench")
    for start, arrays in blocks:
        w.write(start, **arrays)
    store = w.close()
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in store.iter_chunks(store.names):
        pass
    t_read = time.perf_counter() - t0
    sizes = dir_bytes(path)
    out = {"k": k, "dtype": dtype, "bytes_per_pos": sum(sizes.values()) / N,
           "per_array": {n: s / N for n, s in sizes.items()}, "write_mbs": raw / t_write / 1e6,
           "read_mbs": raw / t_read / 1e6, "raw_per_pos": raw / N}
    shutil.rmtree(path)
    return out


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        results = [run(k, dtype, root) for k in (16, 64, 128) for dtype in ("float16", "float32")]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    full = VOCAB * 2
    lines = [
        "# Store storage figures",
        "",
        "Produced by `make bench-store` (`tests/benchmarks/bench_store.py`); do not edit by hand.",
        f"{N:,} positions of realistic Zipf-shaped top-K log-probs over a {VOCAB:,}-id vocabulary "
        "(`pipeline.store.synthetic.zipf_blocks`), written through `StoreWriter` (Blosc zstd level 5 + byte "
        "shuffle, crc32c per chunk, 65,536-position chunks). Throughput counts uncompressed array bytes; the "
        "read is a full chunk-by-chunk read of every array.",
        f"Machine: {platform.machine()}, Python {sys.version.split()[0]}, numpy {np.__version__}.",
        "",
        "| K | log-prob dtype | bytes / position | uncompressed | write MB/s | read MB/s | vs full fp16 logits |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['k']} | {r['dtype']} | {r['bytes_per_pos']:.1f} | {r['raw_per_pos']:.0f} | "
                     f"{r['write_mbs']:.0f} | {r['read_mbs']:.0f} | {full / r['bytes_per_pos']:.0f}x smaller |")
    k64 = next(r for r in results if r["k"] == 64 and r["dtype"] == "float16")
    verdict = "meets" if k64["bytes_per_pos"] <= 220 else "MISSES"
    lines += [
        "",
        f"Full float16 logits of a {VOCAB:,}-class model take {full:,} B/position. Target: at most 220 B/position "
        f"at K=64 with float16 log-probs: measured {k64['bytes_per_pos']:.1f} ({verdict} the target).",
        "",
        "Per array at K=64, float16 (bytes / position):",
        "",
        "| array | bytes / position |",
        "|---|---|",
    ]
    for name, b in sorted(k64["per_array"].items(), key=lambda x: -x[1]):
        lines.append(f"| {name} | {b:.2f} |")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
