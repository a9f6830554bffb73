"""Reliability figures for tests/benchmarks/reliability.md: the promise "nothing lost, nothing silently wrong".

Four campaigns, each counted:
1. SIGKILL and resume. (a) The store writer alone (tests/store_writer_script.py) killed at seeded random moments,
   restarted until complete; (b) the real `python -m pipeline.extract` on a tiny random-init GPT-2, killed while it
   writes, rerun. Every finished store must equal an uninterrupted run bit for bit (every array, every table).
2. Corruptions of a complete store (a missing chunk, two swapped chunks, a flipped byte in a chunk and in a table, a
   truncated chunk, unparsable or edited metadata, ...). Each must be reported by `verify` AND refused by the analysis
   with a typed StoreError (never a number computed from fill values).
3. Bad inputs to the CLIs (missing model or dataset path, overwrite/rm of an ordinary folder, a second writer, a
   partial store continued with other weights, ...): each must exit non-zero with a one-line error and no traceback.
4. Data lost: sentinel files placed beside and inside every target folder must survive every trial (must be 0).

Run: make reliability   (about 5-10 minutes on 2 cores; not part of `make test`). Exit status 1 if any promise fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from pipeline.store import StoreError, open_store  # noqa: E402
from pipeline.store.schema import PROGRESS_FILE  # noqa: E402
from pipeline.store.synthetic import random_distributions, write_store_from_logprobs  # noqa: E402
from pipeline.store.verify import verify_store  # noqa: E402

OUT = Path(__file__).with_name("reliability.md")
WRITER_SCRIPT = ROOT / "tests" / "store_writer_script.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)


def same_store(a: Path, b: Path) -> bool:
    """Every array and table of two stores identical in dtype and bytes."""
    sa, sb = open_store(a), open_store(b)
    if sorted(sa.names) != sorted(sb.names) or sorted(sa.tables) != sorted(sb.tables):
        return False
    for name in sa.names:
        x, y = sa.read([name])[name], sb.read([name])[name]
        if x.dtype != y.dtype or x.tobytes() != y.tobytes():
            return False
    for name in sa.tables:
        x, y = sa.table(name), sb.table(name)
        if x.dtype != y.dtype or x.tobytes() != y.tobytes():
            return False
    return sa.stream_hash == sb.stream_hash


def is_complete(path: Path) -> bool:
    try:
        return bool(json.loads((path / "zarr.json").read_text())["attributes"].get("complete"))
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False


def n_done(path: Path) -> int:
    prog = path / PROGRESS_FILE
    try:
        return int(json.loads(prog.read_text())["n_done"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


# ------------------------------------------------------------------------------------------------ 1. SIGKILL
def kill_writer(work: Path, trials: int, rng: random.Random) -> dict:
    ref = work / "writer-ref.zarr"
    subprocess.run([sys.executable, str(WRITER_SCRIPT), str(ref), "0"], check=True, env=ENV)
    kills = identical = 0
    for trial in range(trials):
        path = work / f"writer-{trial}.zarr"
        for _ in range(3):  # kill it up to three times, at random moments, before letting it finish
            if is_complete(path):
                break
            proc = subprocess.Popen([sys.executable, str(WRITER_SCRIPT), str(path), "0.15"], env=ENV)
            time.sleep(rng.uniform(0.5, 2.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        if not is_complete(path):
            subprocess.run([sys.executable, str(WRITER_SCRIPT), str(path), "0"], check=True, env=ENV)
        identical += same_store(ref, path)
    return {"campaign": "store writer", "trials": trials, "sigkills": kills, "bit_identical": identical}


def extract_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.extract", f"model.name_or_path={model}", "dataset=text_file",
            f"dataset.path={data}", "extract.top_k=8", "extract.context_length=32", "extract.stride=32",
            "extract.chunk_size=256", "model.batch_size=1", "extract.progress=false", f"store={out}", *extra]


def kill_extraction(work: Path, model: Path, data: Path, trials: int, rng: random.Random) -> dict:
    ref = work / "extract-ref.zarr"
    r = subprocess.run(extract_args(model, data, ref), cwd=ROOT, env=ENV, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"reference extraction failed:\n{r.stderr[-2000:]}")
    total = open_store(ref).n
    kills = identical = 0
    for trial in range(trials):
        path = work / f"extract-{trial}.zarr"
        proc = subprocess.Popen(extract_args(model, data, path), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        target = rng.randint(256, max(256, total - 256))  # inside the run: after the first chunk, before the end
        deadline = time.time() + 300
        while proc.poll() is None and n_done(path) < target and time.time() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if not is_complete(path):  # killed: the rerun resumes it
            r = subprocess.run(extract_args(model, data, path), cwd=ROOT, env=ENV, capture_output=True, text=True)
            if r.returncode:
                print(f"resume failed:\n{r.stderr[-2000:]}", file=sys.stderr)
        identical += is_complete(path) and same_store(ref, path)
    return {"campaign": "pipeline.extract (tiny GPT-2)", "trials": trials, "sigkills": kills, "bit_identical": identical}


# ------------------------------------------------------------------------------------------------ 2. corruptions
def chunk_files(store: Path, name: str) -> list[Path]:
    return sorted((p for p in (store / name).rglob("*") if p.is_file() and p.name != "zarr.json"),
                  key=lambda p: [int(x) for x in p.relative_to(store / name / "c").parts])


def flip(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x5A
    path.write_bytes(bytes(data))


def edit_json(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def _attrs(meta: dict) -> dict:
    return meta["attributes"]


CORRUPTIONS = {
    "missing chunk (target_logprob)": lambda s: chunk_files(s, "target_logprob")[1].unlink(),
    "missing chunk (topk_ids)": lambda s: chunk_files(s, "topk_ids")[-1].unlink(),
    "two chunks swapped (target_logprob)": lambda s: _swap(*chunk_files(s, "target_logprob")[:2]),
    "two chunks swapped (targets)": lambda s: _swap(*chunk_files(s, "targets")[1:3]),
    "flipped byte in a chunk (topk_logprobs)": lambda s: flip(chunk_files(s, "topk_logprobs")[1]),
    "flipped byte in a chunk (tail_logmass)": lambda s: flip(chunk_files(s, "tail_logmass")[0], 0.7),
    "flipped byte in the vocabulary table": lambda s: flip(chunk_files(s, "vocab")[0]),
    "truncated chunk (doc_id)": lambda s: _truncate(chunk_files(s, "doc_id")[0]),
    "empty chunk file (targets)": lambda s: chunk_files(s, "targets")[0].write_bytes(b""),
    "unparsable zarr.json (group)": lambda s: (s / "zarr.json").write_text("{ not json"),
    "unparsable zarr.json (array)": lambda s: (s / "target_logprob" / "zarr.json").write_text("{"),
    "top_k edited in attributes": lambda s: edit_json(s / "zarr.json", lambda m: _attrs(m).update(top_k=4)),
    "n_positions edited in attributes": lambda s: edit_json(s / "zarr.json", lambda m: _attrs(m).update(
        n_positions=_attrs(m)["n_positions"] - 7)),
    "array dtype edited (target_logprob float32 -> float64)": lambda s: edit_json(
        s / "target_logprob" / "zarr.json", lambda m: m.update(data_type="float64")),
    "array dtype edited (topk_logprobs float16 -> float32)": lambda s: edit_json(
        s / "topk_logprobs" / "zarr.json", lambda m: m.update(data_type="float32")),
    "array shape edited (targets)": lambda s: edit_json(
        s / "targets" / "zarr.json", lambda m: m.update(shape=[m["shape"][0] - 1])),
    "array folder deleted (entropy)": lambda s: shutil.rmtree(s / "entropy"),
}


def _swap(a: Path, b: Path) -> None:
    x, y = a.read_bytes(), b.read_bytes()
    a.write_bytes(y)
    b.write_bytes(x)


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def corruption_campaign(work: Path) -> list[dict]:
    from analysis import Pair

    rng = np.random.default_rng(11)
    n, vocab = 3000, 50
    targets, (la, lb) = random_distributions(n, vocab, rng)
    vocab_strings = np.array([f"tok{i}" for i in range(vocab)])
    kw = dict(doc_id=np.arange(n) // 100, chunk_size=512, tables={"vocab": vocab_strings})
    clean_a = write_store_from_logprobs(work / "clean-a.zarr", la, targets, 8, model="a", n_params=2_000_000, **kw)
    write_store_from_logprobs(work / "clean-b.zarr", lb, targets, 8, model="b", n_params=1_000_000, **kw)
    truth = Pair(clean_a.path, work / "clean-b.zarr").sweep([0.0, 0.5, 1.0])
    rows = []
    for what, corrupt in CORRUPTIONS.items():
        victim = work / "victim.zarr"
        shutil.rmtree(victim, ignore_errors=True)
        shutil.copytree(clean_a.path, victim)
        corrupt(victim)
        report = verify_store(victim)
        try:
            got = Pair(victim, work / "clean-b.zarr").sweep([0.0, 0.5, 1.0])
            analysis = "silently equal" if got.equals(truth) else "SILENTLY WRONG"
        except StoreError as e:
            analysis = f"refused ({type(e).__name__})"
        except Exception as e:  # an untyped error is a failure of the promise too
            analysis = f"UNTYPED {type(e).__name__}"
        rows.append({"corruption": what, "verify": "reported" if not report.ok else "MISSED",
                     "analysis": analysis})
    return rows


# ------------------------------------------------------------------------------------------------ 3. bad inputs
def one_line_error(r: subprocess.CompletedProcess) -> bool:
    """Exit != 0, no traceback or Hydra wrapper, and the last line of stderr names the error (the log lines of a
    run that got as far as loading may come before it)."""
    err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    last = err[-1] if err else ""
    named = last.split(":", 1)[0].endswith("Error") or last.startswith("error ")
    return r.returncode != 0 and "Traceback" not in r.stderr and "Error executing job" not in r.stderr and named


def bad_input_campaign(work: Path, model: Path, data: Path, model_b: Path) -> tuple[list[dict], list[Path]]:
    sentinels: list[Path] = []

    def sentinel(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for rel in ("notes.txt", "sub/results.csv"):
            p = folder / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("precious\n")
            sentinels.append(p)
        return folder

    plain = sentinel(work / "my-thesis")
    stores_root = work / "root"
    partial = stores_root / "partial.zarr"
    cases = {
        "model path does not exist": extract_args(work / "no-such-model", data, work / "o1.zarr"),
        "dataset path does not exist": extract_args(model, work / "no-such.jsonl", work / "o2.zarr"),
        "dataset=text_file without dataset.path": [a for a in extract_args(model, data, work / "o3.zarr")
                                                   if not a.startswith("dataset.path")],
        "store= an ordinary folder, overwrite=true": extract_args(model, data, plain, "overwrite=true"),
        "store= an ordinary folder": extract_args(model, data, plain),
        "stores rm of an ordinary folder": [sys.executable, "-m", "pipeline.stores", "rm", str(plain)],
        "top_k=0": extract_args(model, data, work / "o4.zarr", "extract.top_k=0"),
        "unknown logprob dtype": extract_args(model, data, work / "o5.zarr", "extract.logprob_dtype=int8"),
    }
    rows = []
    for what, cmd in cases.items():
        r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        rows.append({"bad input": what, "exit": r.returncode, "one-line error": one_line_error(r),
                     "message": (r.stderr.strip().splitlines() or [""])[-1][:160]})

    # A partial store continued with other weights: kill an extraction, then rerun with model B at the same store=.
    proc = subprocess.Popen(extract_args(model, data, partial), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and n_done(partial) < 256 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shutil.copytree(model, work / "retrained", dirs_exist_ok=True)
    for f in model_b.iterdir():  # same directory name, other weights: "retrained in place"
        if f.is_file():
            shutil.copy2(f, work / "retrained" / f.name)
    r = subprocess.run(extract_args(work / "retrained", data, partial), cwd=ROOT, env=ENV, capture_output=True,
                       text=True)
    rows.append({"bad input": "resume a partial store with other weights", "exit": r.returncode,
                 "one-line error": one_line_error(r), "message": (r.stderr.strip().splitlines() or [""])[-1][:160]})

    # A second writer while the first runs must fail in seconds (before the model and data load).
    live = work / "live.zarr"
    first = subprocess.Popen(extract_args(model, data, live), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while first.poll() is None and n_done(live) < 1 and time.time() < deadline:
        time.sleep(0.02)
    t0 = time.perf_counter()
    r = subprocess.run(extract_args(model, data, live), cwd=ROOT, env=ENV, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    first.wait()
    rows.append({"bad input": f"second writer on a live store (failed after {dt:.1f} s)", "exit": r.returncode,
                 "one-line error": one_line_error(r), "message": (r.stderr.strip().splitlines() or [""])[-1][:160]})
    return rows, sentinels


# ------------------------------------------------------------------------------------------------ report
def table(rows: list[dict]) -> list[str]:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(r[k]).replace("|", "/") for k in keys) + " |" for r in rows]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writer-trials", type=int, default=10)
    ap.add_argument("--extract-trials", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from extract_helpers import make_model, write_jsonl

    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="arcache-reliability-") as tmp:
        work = Path(tmp)
        model = make_model(work / "tiny-gpt2", "gpt2", max_len=64, seed=0)
        model_b = make_model(work / "tiny-gpt2-b", "gpt2", max_len=64, seed=1)
        texts = [" ".join(f"word{(i * 7 + j) % 53} and more text, line {j}." for j in range(40)) for i in range(60)]
        data = write_jsonl(work / "docs.jsonl", texts)
        kills = [kill_writer(work, args.writer_trials, rng), kill_extraction(work, model, data, args.extract_trials, rng)]
        corrupt = corruption_campaign(work)
        bad, sentinels = bad_input_campaign(work, model, data, model_b)
        lost = [str(p) for p in sentinels if not p.exists() or p.read_text() != "precious\n"]
    elapsed = time.perf_counter() - t0

    survived = sum(k["bit_identical"] for k in kills)
    trials = sum(k["trials"] for k in kills)
    # detected: verify reports it, and the analysis refuses with a typed error or (damage in data it does not read)
    # returns exactly the undamaged numbers; never a different number, never an untyped error
    detected = sum(r["verify"] == "reported" and (r["analysis"].startswith("refused") or r["analysis"] ==
                                                   "silently equal") for r in corrupt)
    typed = sum(r["exit"] != 0 and r["one-line error"] for r in bad)
    ok = survived == trials and detected == len(corrupt) and typed == len(bad) and not lost
    lines = [
        "# Reliability (`make reliability`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{elapsed:.0f} s in all; seed {args.seed}.",
        "",
        "| promise | result |",
        "|---|---|",
        f"| SIGKILLed runs that finished bit-identical to an uninterrupted run | {survived} of {trials} "
        f"({sum(k['sigkills'] for k in kills)} SIGKILLs) |",
        f"| corruptions reported by `verify`, with the analysis refusing them (typed error) or, for data it does not "
        f"read, giving the undamaged numbers | {detected} of {len(corrupt)} |",
        f"| bad inputs answered with a one-line typed error, exit != 0 | {typed} of {len(bad)} |",
        f"| data lost (sentinel files outside stores that changed or vanished) | {len(lost)} |",
        "",
        "## SIGKILL and resume", "", *table(kills), "",
        "## Corruptions of a complete store", "", *table(corrupt), "",
        "## Bad inputs", "", *table(bad), "",
    ]
    if lost:
        lines += ["## Lost files", "", *[f"- {p}" for p in lost], ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
