"""Analysis past one machine's memory: the Dask engine on a pair larger than a memory cap -> scale.md.

    .venv/bin/python tests/benchmarks/bench_scale.py [--cap-mb 128] [--factor 10] [--n-small 2000000]

Every measured run is a child process (``--child``). It imports everything (numpy, numba, polars, zarr, dask;
distributed and the LocalCluster's workers for the cluster rows), runs both engines on a tiny in-memory pair (the
kernels loaded), and reports ready; its process tree's resident memory then is the BASELINE. From then on the
parent polls the tree's resident memory (psutil, every 20 ms, the child and all its descendants summed) and the
memory the analysis ADDS is peak minus baseline. The cap applies to that: the big run is killed (and the benchmark
fails) when it adds more than --cap-mb. Rows:
- in-memory engine vs Dask (threaded; 2-worker LocalCluster) on a pair that fits: time per million positions of a
  101-weight sweep + the exact optima, and the memory each adds;
- the in-memory engine's measured bytes per position on that pair sizes the big pair: the in-memory engine would
  need >= --factor times the cap for it; the Dask engine analyses it within the cap;
- where the Dask time goes: task waves (heavy: phase 1 of every chunk group; light: the target log-probs only,
  one per step of the NLL solver) with their times, and the light waves with one chunk per task for comparison;
- the cost of one task wave (no-op tasks) on the threaded scheduler and the LocalCluster.
The stores are written chunk by chunk with StoreWriter from a few generated blocks used in turn (the analysis
does not care that the stream repeats; generation stays within minutes), and kept under stores/_bench/scale/.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
POLL_S = 0.02


def write_tiled_pair(directory: Path, n: int, k: int, vocab: int = 50257, chunk: int = 65536, n_blocks: int = 6):
    """Stores zipf-A / zipf-B of n positions from n_blocks generated chunks used in turn (doc_id kept increasing)."""
    from pipeline.store.hashing import config_hash
    from pipeline.store.synthetic import _zipf_block, synthetic_attrs
    from pipeline.store.writer import StoreWriter

    pa, pb = directory / "zipf-A.zarr", directory / "zipf-B.zarr"
    if (pa / "zarr.json").is_file() and (pb / "zarr.json").is_file():
        from pipeline.store import open_store

        try:
            if open_store(pa).n == n and open_store(pb).n == n:
                return pa, pb
        except Exception:  # noqa: BLE001 (rewrite a partial or damaged bench store)
            pass
    blocks = [_zipf_block(np.random.default_rng([7, i]), chunk, k, vocab, i * chunk) for i in range(n_blocks)]
    for pair in blocks:
        for arrays in pair:
            arrays["topk_logprobs"] = arrays["topk_logprobs"].astype("float16")
    writers = []
    for name, params in (("zipf-A", 1_000_000_000), ("zipf-B", 100_000_000)):
        a = synthetic_attrs(name, n_params=params, dataset="zipf-scale", tokenizer="zipf-vocab")
        writers.append(StoreWriter(directory / f"{name}.zarr", n_positions=n, top_k=k, n_classes=vocab,
                                   logprob_dtype="float16", attrs=a, chunk_size=chunk,
                                   setting_hash=config_hash([a, n, k, vocab, "tiled"]), overwrite=True))
    for i, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        for w, arrays in zip(writers, blocks[i % n_blocks]):
            part = {key: v[:m] for key, v in arrays.items()}
            part["doc_id"] = ((start + np.arange(m)) // 2048).astype(np.int32)
            w.write(start, **part)
    for w in writers:
        w.close()
    return pa, pb


# ---------------------------------------------------------------------------------------------- children
def _warm(client) -> None:
    """Both engines once on a tiny in-memory pair (float16 lists, as the bench stores): every kernel loaded."""
    from analysis import MemoryStore, Pair
    from pipeline.store.synthetic import arrays_from_logprobs, random_distributions

    rng = np.random.default_rng(0)
    targets, (la, lb) = random_distributions(9000, 40, rng, noise=(0.7, 1.3))
    sa, sb = (MemoryStore(arrays_from_logprobs(lp, targets, 8, "float16", doc_id=np.arange(9000) // 500),
                          n_classes=40, attrs={"model": {"name": name}}, chunk_size=4096)
              for lp, name in ((la, "A"), (lb, "B")))
    w = np.linspace(0.0, 1.0, 101)
    for pair in (Pair(sa, sb, order="given"), Pair(sa, sb, order="given", engine="dask", client=client)):
        pair.sweep(w)
        pair.optimum()


def _instrument(engine) -> list:
    """Record (kind, seconds) of every task wave the engine runs: heavy (phase 1) or light (target log-probs)."""
    waves = []
    compute = engine.compute

    def timed(*objs):
        first = objs[0][0] if isinstance(objs[0], list) else objs[0]
        kind = "light" if "light_task" in str(getattr(first, "key", "")) else "heavy"
        t0 = time.perf_counter()
        out = compute(*objs)
        waves.append((kind, time.perf_counter() - t0))
        return out

    engine.compute = timed
    light = engine._light

    def counted(what, *a):  # which evaluation of the NLL solver each light wave is
        waves.append(("kind", what))
        return light(what, *a)

    engine._light = counted
    return waves


def child(mode: str, pa: str, pb: str, workers: int) -> dict:
    """One measured run: MODE local | threads | threads1 (light tasks of one chunk) | cluster | wave."""
    import dask  # noqa: F401  (every mode imports the same modules before its baseline)

    from analysis import Pair

    if mode == "wave":
        return wave_cost(workers)
    client = None
    if mode == "cluster":
        from analysis.engines.dask import connect

        client = connect(cluster="local", n_workers=workers, threads_per_worker=1, memory_limit="2GB")
    _warm(client)
    gc.collect()
    print("BASELINE", flush=True)  # the parent measures the tree's memory now, then says go
    sys.stdin.readline()
    w = np.linspace(0.0, 1.0, 101)
    t0 = time.perf_counter()
    if mode == "local":
        pair = Pair(pa, pb)
    else:
        opts = {"light_group": 65536} if mode == "threads1" else {}
        pair = Pair(pa, pb, engine="dask", client=client, workers=workers, **opts)
    waves = _instrument(pair._engine) if pair._engine is not None else []
    frame = pair.sweep(w)
    t_sweep = time.perf_counter() - t0
    opt = pair.optimum()
    t_all = time.perf_counter() - t0
    light = [t for kind, t in waves if kind == "light"]
    heavy = [t for kind, t in waves if kind == "heavy"]
    kinds: dict = {}
    for kind, what in waves:
        if kind == "kind":
            kinds[what] = kinds.get(what, 0) + 1
    out = {"n": pair.primary.n, "t_sweep": t_sweep, "t_opt": t_all - t_sweep, "t_all": t_all,
           "alpha_nll": opt.alpha_nll, "alpha_acc": opt.alpha_acc, "d_acc": opt.d_acc,
           "nll_sum_mid": float(frame["nll_sum"][50]), "n_light": len(light), "t_light": sum(light),
           "n_heavy": len(heavy), "t_heavy": heavy, "light_kinds": kinds,
           "tasks_heavy": len(pair._engine.ranges) if pair._engine is not None else 0,
           "tasks_light": len(pair._engine.light_ranges) if pair._engine is not None else 0}
    if client is not None:
        client.close()
        client.cluster.close()
    return out


def wave_cost(workers: int) -> dict:
    import dask

    from analysis.engines.dask import connect

    def noop(i):
        return i

    n = 400
    res = {}
    t0 = time.perf_counter()
    dask.compute(*[dask.delayed(noop)(i) for i in range(n)], scheduler="threads", num_workers=workers)
    res["threads_ms"] = (time.perf_counter() - t0) / n * 1e3 * workers
    client = connect(cluster="local", n_workers=workers, threads_per_worker=1, memory_limit="1GB")
    client.compute([dask.delayed(noop)(i) for i in range(20)], sync=True)  # warm
    t0 = time.perf_counter()
    client.compute([dask.delayed(noop)(i) for i in range(n)], sync=True)
    res["cluster_ms"] = (time.perf_counter() - t0) / n * 1e3 * workers
    trips = []
    for i in range(20):
        t0 = time.perf_counter()
        client.compute([dask.delayed(noop)(1000 + i)], sync=True)
        trips.append(time.perf_counter() - t0)
    res["cluster_round_trip_ms"] = float(np.median(trips)) * 1e3
    client.close()
    client.cluster.close()
    return res


# ---------------------------------------------------------------------------------------------- the parent
def _tree_rss(ps) -> int:
    total = 0
    for p in [ps, *ps.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001 (a process that just ended)
            pass
    return total


def measured(mode: str, pa, pb, workers: int, cap_mb: float | None = None) -> dict:
    """Run a child; after its BASELINE line poll its process tree's resident memory; kill it (and fail) when it
    adds more than cap_mb over the baseline."""
    import psutil

    cmd = [sys.executable, __file__, "--child", mode, str(pa), str(pb), str(workers)]
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    ps = psutil.Process(proc.pid)
    base = peak = None
    over = False
    got = []
    while proc.poll() is None or not lines.empty():
        try:
            line = lines.get(timeout=POLL_S)
            got.append(line)
            if line.strip() == "BASELINE":
                samples = []
                for _ in range(5):
                    samples.append(_tree_rss(ps))
                    time.sleep(POLL_S)
                base = peak = int(np.median(samples))
                proc.stdin.write("go\n")
                proc.stdin.flush()
        except queue.Empty:
            pass
        if base is not None and proc.poll() is None:
            rss = _tree_rss(ps)
            peak = max(peak, rss)
            if cap_mb and rss - base > cap_mb * 1e6:
                over = True
                for p in [*ps.children(recursive=True), ps]:
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
                break
    proc.wait()
    err.seek(0)
    if over:
        raise SystemExit(f"{mode}: the analysis added {(peak - base) / 1e6:.0f} MB over the baseline of "
                         f"{base / 1e6:.0f} MB, above the cap of {cap_mb:.0f} MB")
    if proc.returncode:
        raise SystemExit(f"{mode} failed:\n{err.read()[-3000:]}")
    res = json.loads(got[-1])
    if base is not None:
        res["base_mb"], res["peak_mb"], res["added_mb"] = base / 1e6, peak / 1e6, (peak - base) / 1e6
    return res


def _machine() -> str:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((x.split(":", 1)[1].strip() for x in out.splitlines() if x.startswith("Model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, `nproc` = {os.cpu_count()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=4, metavar=("MODE", "A", "B", "WORKERS"))
    ap.add_argument("--cap-mb", type=float, default=128.0, help="cap on the memory the analysis adds (MB)")
    ap.add_argument("--factor", type=float, default=10.0, help="the big pair needs this many caps in memory")
    ap.add_argument("--n-small", type=int, default=2_000_000)
    ap.add_argument("--n-big", type=int, default=None, help="default: sized from the measured in-memory engine")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default=str(ROOT / "stores" / "_bench" / "scale"))
    ap.add_argument("--out", default=str(ROOT / "tests" / "benchmarks" / "scale.md"))
    args = ap.parse_args()
    if args.child:
        mode, pa, pb, workers = args.child
        print(json.dumps(child(mode, pa, pb, int(workers))))
        return
    os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    d = Path(args.dir)
    t0 = time.perf_counter()
    small = write_tiled_pair(d / f"n{args.n_small}", args.n_small, args.k)
    t_gen_small = time.perf_counter() - t0
    runs = {m: measured(m, *small, args.workers) for m in ("local", "threads", "threads1", "cluster")}
    wave = measured("wave", *small, args.workers)
    local_bpp = runs["local"]["added_mb"] * 1e6 / runs["local"]["n"]
    unit = 1 << 20
    n_big = args.n_big or unit * math.ceil(args.factor * args.cap_mb * 1e6 / local_bpp / unit)
    t0 = time.perf_counter()
    big = write_tiled_pair(d / f"n{n_big}", n_big, args.k)
    t_gen_big = time.perf_counter() - t0
    huge = measured("threads", *big, args.workers, cap_mb=args.cap_mb)
    need_mb = n_big * local_bpp / 1e6
    same = all(runs[m][k] == runs["local"][k] for m in ("threads", "threads1", "cluster")
               for k in ("alpha_nll", "alpha_acc", "d_acc", "nll_sum_mid"))
    per_m = lambda r: r["t_all"] / (r["n"] / 1e6)  # noqa: E731
    load_end = os.getloadavg()
    cmd = " ".join([".venv/bin/python", "tests/benchmarks/bench_scale.py", *sys.argv[1:]])
    lines = [
        "# Analysis past one machine's memory (Dask engine)", "",
        f"Produced by `make bench-scale` (`{cmd}`); do not edit by hand. Took {time.perf_counter() - t_start:.0f} s.",
        f"Machine: 2-core sandbox ({_machine()}), Python {platform.python_version()}. Load average (1, 5, 15 min) "
        f"{' / '.join(f'{x:.1f}' for x in load_start)} at the start, {' / '.join(f'{x:.1f}' for x in load_end)} at "
        "the end: the cores were shared with other work, which inflates every time below.",
        f"Pairs: Zipf-shaped, K = {args.k}, float16 lists, chunks of 65,536 positions; stores written chunk by chunk "
        f"({t_gen_small:.0f} s and {t_gen_big:.0f} s; 0 when reused). Work measured: a 101-weight sweep, then "
        "`Pair.optimum()` (exact NLL and ACC optima and their domains).", "",
        "**Memory, as measured here.** Each run is a child process. It first imports numpy, numba, polars, zarr and "
        "dask (the cluster rows: also distributed, and start their workers), runs both engines on a tiny pair so "
        "every kernel is loaded, and then reports ready: the resident memory of its process tree at that moment is "
        f"the *baseline* ({runs['local']['base_mb']:.0f} MB here for one interpreter, {runs['cluster']['base_mb']:.0f} MB "
        "with the LocalCluster's scheduler, nannies and workers; the same whatever the pair's size). The parent then "
        "polls the tree's resident memory every 20 ms (psutil; the child and all its descendants summed). "
        "**Added memory = peak minus baseline**: what the analysis of the pair holds. The cap applies to it.", "",
        f"## A pair larger than memory: {n_big:,} positions", "",
        f"The in-memory engine adds {local_bpp:.0f} B per position (measured on the pair below: "
        f"{runs['local']['added_mb']:.0f} MB for {runs['local']['n']:,} positions; its per-position arrays are "
        f"~65 B). For this pair it would need {need_mb:,.0f} MB, **{need_mb / args.cap_mb:.1f}x the cap of "
        f"{args.cap_mb:.0f} MB** that this run enforces on the Dask engine (the child is killed above it).", "",
        "| engine | positions | baseline (MB) | added (MB) | sweep (s) | optima (s) | s per million positions | "
        "task waves (heavy + light) |",
        "|---|---|---|---|---|---|---|---|",
        f"| dask, threaded ({args.workers} threads) | {huge['n']:,} | {huge['base_mb']:.0f} | "
        f"**{huge['added_mb']:.0f}** (cap {args.cap_mb:.0f}) | {huge['t_sweep']:.1f} | {huge['t_opt']:.1f} | "
        f"{per_m(huge):.2f} | {huge['n_heavy']} + {huge['n_light']} |", "",
        f"## Against the in-memory engine on a pair that fits: {args.n_small:,} positions", "",
        "| engine | baseline (MB) | added (MB) | sweep (s) | optima (s) | s per million positions | time vs local |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {"local": "local (in memory)", "threads": f"dask, threaded ({args.workers} threads)",
              "threads1": f"dask, threaded, light tasks of one chunk ({args.workers} threads)",
              "cluster": f"dask, LocalCluster ({args.workers} worker processes, 1 thread each)"}
    for m, label in labels.items():
        r = runs[m]
        lines.append(f"| {label} | {r['base_mb']:.0f} | {r['added_mb']:.0f} | {r['t_sweep']:.2f} | {r['t_opt']:.2f} | "
                     f"{per_m(r):.2f} | {r['t_all'] / runs['local']['t_all']:.2f}x |")
    lines += [
        "", "Results identical across the engines (alpha_nll, alpha_acc, D_acc, an NLL sum, compared with ==): "
        f"{same}.", "",
        "## Where the Dask time goes", "",
        "| run | heavy waves: tasks, seconds each | light waves: tasks, count, seconds in all (per wave) | "
        "light waves by solver evaluation |",
        "|---|---|---|---|"]
    for name, r in (("big pair, threaded", huge), ("small pair, threaded", runs["threads"]),
                    ("small pair, threaded, light tasks of one chunk", runs["threads1"]),
                    ("small pair, LocalCluster", runs["cluster"])):
        lines.append(f"| {name} | {r['tasks_heavy']} tasks: {', '.join(f'{t:.2f}' for t in r['t_heavy'])} | "
                     f"{r['tasks_light']} tasks: {r['n_light']} waves, {r['t_light']:.2f} s "
                     f"({r['t_light'] / max(1, r['n_light']):.3f}) | "
                     f"{', '.join(f'{k} {v}' for k, v in r['light_kinds'].items())} |")
    t1, t8 = runs["threads1"], runs["threads"]
    lines += [
        "", "Heavy waves run phase 1 (every array of both stores) of every chunk group: the sweep's pass (it also "
        "counts the ACC optimum's bins) and the gathering of the end points in the bins that can hold the ACC "
        "maximum. Light waves read only `target_logprob` (8 B per position): one per evaluation of the NLL "
        "solver (`checks`: the slopes at w = 0 and 1 and the degenerate cases; `slope`: each safeguarded Newton "
        "step for w*; `value`: L(w*), then the NLL at the optimal weights; `excess`: each step of the root of "
        "E(w) = L(w) - L(1) for D_nll). Their number is the in-memory "
        "solver's, step for step (that is what keeps the optimum bit-identical). A light wave is dominated by "
        "reading `target_logprob` through the store (its checks included) and by the per-task overhead, so light "
        "tasks span 8 chunk groups (`analysis.dask.light_group`; ~24 B per position, about a heavy task's "
        f"memory): the optima took {t8['t_opt']:.2f} s against {t1['t_opt']:.2f} s with light tasks of one chunk "
        f"({t8['t_light']:.2f} s against {t1['t_light']:.2f} s in light waves). Many `excess` waves mean the "
        "search for D_nll's root fell back to bisection: the shared solver (`optimum._solve`) bisects its whole "
        "bracket when a converged Newton step lands on the bracket's edge (down to its 1e-13 tolerance, ~30 more "
        "evaluations), which costs microseconds in memory and one light wave each here.", "",
        "## The cost of one task wave", "",
        f"No-op tasks: {wave['threads_ms']:.2f} ms of a worker per task on the threaded scheduler, "
        f"{wave['cluster_ms']:.2f} ms on the LocalCluster; one round trip to the LocalCluster (submit one task, get "
        f"its result; median of 20) {wave['cluster_round_trip_ms']:.1f} ms. A wave costs about one round trip plus "
        "(tasks / workers) x the per-task cost, on top of its work.", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
