"""Protein sequences for masked-model stores (DESIGN section 8; the paper's appendix C.2).

Reading: FASTA (`>` header lines, sequence lines joined, `;` comment lines ignored) or CSV/TSV with a sequence
column (`dataset.text_field`), plain or gzipped, local or shipped in a package (`package:<module>/<file>`).
A record's `doc_id` is its index in the file, so it names the same record whatever split or filter kept it.

Splitting: with `dataset.split_fractions` (e.g. train 0.8, valid 0.1, test 0.1) the records are permuted by
`numpy.random.default_rng(dataset.seed)` and cut in that order of splits at round(n * cumulative fraction);
each split keeps file order. Without it the whole file is the split.

Cleaning (model-independent, recorded in the protocol): whitespace inside a sequence is dropped; one trailing
`*` (the stop codon of a translated gene) is stripped; letters are upper-cased. Residues the model's alphabet
lacks are counted per letter and, by `masking.unknown` (default `skip`), either skip the whole sequence or are
read as the tokenizer's unknown token (`unk`; they may then be masked and scored as that token).

Masking (the paper's C.2): 15% of each sequence's residues, never a special token, all replaced by the mask
token in one forward pass. The masked residues are a function of (seed, doc_id, sequence) only, never of the
model, so every model of one run masks the same residues:

    k    = max(1, floor(fraction * n + 1/2))                 n = residues of the (cleaned) sequence
    key  = int.from_bytes(sha256(f"{seed}:{doc_id}:{sequence}")[:8], "little")
    u    = numpy.random.PCG64(key).random_raw(n)             (uint64; a bit stream NumPy keeps stable)
    mask = sorted(argsort(u, kind="stable")[:k])              (residue indices, 0-based)

Long sequences (more than W = L - 2 residues, L the model's token capacity with <cls> and <eos>):
`split` (default) scores them in ceil(n / W) near-equal consecutive windows, window i holding residues
[floor(i n / m), floor((i + 1) n / m)), each with its own <cls> ... <eos>; the masks are chosen over the whole
sequence and each masked residue is scored once, in its window. `truncate` keeps the first W residues only
and chooses the masks over them (ESM's evaluation practice of 1,022 residues). Counts are recorded.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np

from .config import DatasetSpec
from .datasets import _package_dir, _resolve_files, text_sha256
from .errors import (
    ConfigError,
    DatasetChecksumError,
    DatasetNotFoundError,
    EmptyDatasetError,
    NotUTF8Error,
    SequenceFormatError,
)

log = logging.getLogger(__name__)

# The ESM-2 alphabet (fair-esm `Alphabet.from_architecture("ESM-1b")`, the vocab.txt of facebook/esm2_*), ids 0..32.
ESM_ALPHABET = ("<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q",
                "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>")

LONG_POLICIES = ("split", "truncate")
UNKNOWN_POLICIES = ("skip", "unk")
MASK_RULE = ("k = max(1, floor(fraction*n + 1/2)); key = sha256('{seed}:{doc_id}:{sequence}')[:8] little-endian; "
             "u = PCG64(key).random_raw(n); masked = sorted(argsort(u, stable)[:k])")


@dataclasses.dataclass(frozen=True)
class Masking:
    """The masking protocol of `dataset.masking` (all of it enters the setting hash)."""
    fraction: float = 0.15
    seed: int = 0
    long_sequences: str = "split"       # split | truncate
    unknown: str = "skip"               # skip | unk
    uppercase: bool = True
    strip_terminal_stop: bool = True

    def __post_init__(self):
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"dataset.masking.fraction={self.fraction} must be in (0, 1] (the paper masks 0.15)")
        if self.long_sequences not in LONG_POLICIES:
            raise ConfigError(f"dataset.masking.long_sequences={self.long_sequences!r}: use one of {LONG_POLICIES}")
        if self.unknown not in UNKNOWN_POLICIES:
            raise ConfigError(f"dataset.masking.unknown={self.unknown!r}: use one of {UNKNOWN_POLICIES}")

    @classmethod
    def from_dict(cls, d: dict | None) -> Masking:
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in dataset.masking; known: {sorted(names)}")
        return cls(**d)


@dataclasses.dataclass
class SequenceSet:
    """The records of one split, cleaned (model-independent)."""
    ids: list[str]
    sequences: list[str]
    doc_ids: list[int]                  # index of each record in the source file
    meta: dict                          # name, split, source, file_sha256, text_sha256, counts


# ---------------------------------------------------------------- files


def resolve_path(path: str) -> Path:
    """A local path, or 'package:<module>/<relative file>' inside an installed package (found, not imported)."""
    if path.startswith("package:"):
        module, _, rel = path[len("package:"):].partition("/")
        return _package_dir(module) / rel
    return Path(path).expanduser()


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"sequence file {path} does not exist: check dataset.path") from None
    except IsADirectoryError:
        raise DatasetNotFoundError(f"dataset.path={path} is a directory: give the FASTA / CSV file itself") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise SequenceFormatError(f"{path} is not a valid gzip file ({e}); check dataset.path") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotUTF8Error(f"{path} is not valid UTF-8 (byte offset {e.start}: {e.reason}); check dataset.path") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_fasta(path: Path) -> tuple[list[str], list[str]]:
    """(ids, raw sequences) of a FASTA file; the id is the header's first word."""
    ids: list[str] = []
    seqs: list[list[str]] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        s = line.strip()
        if not s or s.startswith(";"):
            continue
        if s.startswith(">"):
            words = s[1:].split()
            ids.append(words[0] if words else f"record{len(ids)}")
            seqs.append([])
        elif not seqs:
            raise SequenceFormatError(f"{path} line {lineno} holds sequence data before any '>' header: not a FASTA "
                                      "file? (a CSV needs dataset=uniref50 or dataset.loader=sequence_csv)")
        else:
            seqs[-1].append("".join(s.split()))
    return ids, ["".join(parts) for parts in seqs]


def read_sequence_csv(path: Path, column: str) -> tuple[list[str], list[str]]:
    """(ids, raw sequences) of a CSV (or .tsv) file with a header row; ids from an `id` column, else the row index."""
    text = _read_text(path)
    delimiter = "\t" if ".tsv" in path.suffixes else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if reader.fieldnames is None:
        return [], []
    if column not in reader.fieldnames:
        raise SequenceFormatError(f"{path} has no column {column!r} (columns: {reader.fieldnames}); set "
                                  "dataset.text_field=<the sequence column>")
    id_col = next((c for c in ("id", "ID", "name", "entry", "Entry") if c in reader.fieldnames), None)
    ids, seqs = [], []
    for i, row in enumerate(reader):
        ids.append(str(row[id_col]) if id_col else str(i))
        seqs.append("".join((row[column] or "").split()))
    return ids, seqs


def split_records(n: int, split: str, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Indices (in file order) of the records of `split`: a seeded permutation cut by cumulative fractions."""
    if not fractions:
        return np.arange(n)
    if split not in fractions:
        raise DatasetNotFoundError(f"split {split!r} is not among this dataset's splits {sorted(fractions)}; "
                                   "pass dataset.split=<one of them>")
    total = sum(float(f) for f in fractions.values())
    if any(float(f) < 0 for f in fractions.values()) or not math.isclose(total, 1.0, abs_tol=1e-9):
        raise ConfigError(f"dataset.split_fractions={dict(fractions)} must be non-negative and sum to 1")
    perm = np.random.default_rng(seed).permutation(n)
    cum, lo = 0.0, 0
    for name, f in fractions.items():
        cum += float(f)
        hi = n if name == list(fractions)[-1] else int(round(n * cum))
        if name == split:
            return np.sort(perm[lo:hi])
        lo = hi
    raise AssertionError("unreachable")


def clean(seq: str, masking: Masking) -> tuple[str, bool]:
    """(cleaned sequence, whether a terminal stop was stripped)."""
    stripped = False
    if masking.strip_terminal_stop and seq.endswith("*"):
        seq, stripped = seq[:-1], True
    if masking.uppercase:
        seq = seq.upper()
    return seq, stripped


def load_sequences(spec: DatasetSpec, masking: Masking) -> SequenceSet:
    """The cleaned records of spec.split (model-independent); the checksum of the raw split is checked."""
    source, revision = None, None
    if spec.files and (not spec.path or resolve_path(spec.path).is_dir()):
        # a hub dataset (hub_id, revision, files[split]) or a local copy of its layout under dataset.path
        files, source, revision = _resolve_files(spec)
        path = Path(files[0])
    elif spec.path:
        path = resolve_path(spec.path)
    else:
        raise ConfigError(f"dataset {spec.name!r} needs dataset.path=<FASTA or CSV file>")
    if spec.loader == "fasta":
        ids, raw = read_fasta(path)
    elif spec.loader == "sequence_csv":
        ids, raw = read_sequence_csv(path, spec.text_field)
    else:
        raise ConfigError(f"dataset.loader={spec.loader!r} is not a sequence loader (fasta, sequence_csv)")
    if not raw:
        kind = "FASTA records ('>' headers)" if spec.loader == "fasta" else "rows under the header"
        raise EmptyDatasetError(f"{path} holds no {kind}: nothing to score; check dataset.path")
    keep = split_records(len(raw), spec.split, spec.split_fractions, spec.seed)
    if spec.n_documents is not None:
        keep = keep[: spec.n_documents]
    raw_split = [raw[i] for i in keep]
    digest = text_sha256(raw_split)
    capped = spec.n_documents is not None
    expected = None if capped else (spec.text_sha256 or {}).get(spec.split)
    if expected and expected != digest:
        raise DatasetChecksumError(f"dataset {spec.name!r} split {spec.split!r}: sequences sha256 {digest} != "
                                   f"{expected} recorded in the config; the file changed: check dataset.path")
    if not expected and not capped:
        log.info("dataset %s/%s text_sha256=%s (not pinned in the config)", spec.name, spec.split, digest)
    seqs, n_stop = [], 0
    for s in raw_split:
        c, stripped = clean(s, masking)
        seqs.append(c)
        n_stop += stripped
    if source is None:
        source = spec.path if spec.path.startswith("package:") else f"file:{path.resolve()}"
    version = revision
    if spec.path and spec.path.startswith("package:"):
        try:
            from importlib.metadata import version as _v

            version = _v(spec.path[len("package:"):].partition("/")[0])
        except Exception:  # noqa: BLE001  a module name that is not a distribution name: no version recorded
            version = None
    meta = {"name": spec.name, "split": spec.split, "source": source, "revision": version, "file": path.name,
            "file_sha256": file_sha256(path), "text_sha256": digest, "n_records_file": len(raw),
            "n_records_split": len(raw_split), "split_fractions": dict(spec.split_fractions) or None,
            "split_seed": spec.seed if spec.split_fractions else None, "n_documents_cap": spec.n_documents,
            "n_terminal_stop_stripped": n_stop}
    return SequenceSet([ids[i] for i in keep], seqs, [int(i) for i in keep], meta)


# ---------------------------------------------------------------- alphabet


def residue_ids(tokenizer) -> dict[str, int]:
    """Single-character tokens of the tokenizer's vocabulary that are not special tokens: the residues it reads."""
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    return {t: i for t, i in tokenizer.get_vocab().items() if len(t) == 1 and t not in special and not t.isspace()}


@dataclasses.dataclass
class Encoded:
    """The sequences the model reads: residue ids per kept sequence, and what was skipped or mapped."""
    ids: list[np.ndarray]               # int64 residue ids (no special tokens)
    sequences: list[str]
    doc_ids: list[int]
    skipped: dict[str, int]             # reason -> number of sequences
    skipped_doc_ids: dict[str, list[int]]
    unknown_letters: dict[str, int]     # letter -> occurrences outside the alphabet (all sequences of the split)
    n_unknown_mapped: int               # residues read as <unk> (masking.unknown=unk)


def encode(seqs: SequenceSet, tokenizer, masking: Masking) -> Encoded:
    """Residues -> ids one character at a time (never the tokenizer's splitting, which would merge a run of
    unknown letters into one token); out-of-alphabet letters per `masking.unknown`."""
    table = residue_ids(tokenizer)
    standard = set("ACDEFGHIKLMNPQRSTVWY")
    missing = sorted(standard - set(table))
    if missing:
        raise SequenceFormatError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no single-character "
                                  f"token for the amino acids {missing}: not a residue-level protein tokenizer "
                                  "(ESM-2's alphabet is)")
    unk = tokenizer.unk_token_id
    if masking.unknown == "unk" and unk is None:
        raise SequenceFormatError("dataset.masking.unknown=unk but the tokenizer has no unknown token; use skip")
    lut = np.full(128, -1, np.int64)  # residue letters are ASCII; anything else is outside the alphabet
    for ch, i in table.items():
        if ord(ch) < 128:
            lut[ord(ch)] = i
    out_ids, out_seqs, out_docs = [], [], []
    skipped: Counter = Counter()
    skipped_docs: dict[str, list[int]] = {}
    letters: Counter = Counter()
    n_mapped = 0
    for seq, doc in zip(seqs.sequences, seqs.doc_ids):
        if not seq:
            skipped["empty"] += 1
            skipped_docs.setdefault("empty", []).append(doc)
            continue
        codes = np.frombuffer(seq.encode("utf-32-le"), np.uint32).astype(np.int64)
        ids = np.where(codes < 128, lut[np.minimum(codes, 127)], -1)
        bad = ids < 0
        if bad.any():
            letters.update(seq[i] for i in np.flatnonzero(bad))
            if masking.unknown == "skip":
                skipped["out_of_alphabet"] += 1
                skipped_docs.setdefault("out_of_alphabet", []).append(doc)
                continue
            ids = np.where(bad, unk, ids)
            n_mapped += int(bad.sum())
        out_ids.append(ids)
        out_seqs.append(seq)
        out_docs.append(doc)
    return Encoded(out_ids, out_seqs, out_docs, dict(skipped), skipped_docs, dict(letters), n_mapped)


# ---------------------------------------------------------------- masks and windows


def n_masked(n: int, fraction: float) -> int:
    return min(n, max(1, math.floor(fraction * n + 0.5))) if n > 0 else 0


def mask_positions(sequence: str, doc_id: int, seed: int, fraction: float) -> np.ndarray:
    """Sorted residue indices to mask (the module docstring's rule); a function of its arguments only."""
    n = len(sequence)
    k = n_masked(n, fraction)
    key = int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}:{sequence}".encode()).digest()[:8], "little")
    u = np.random.PCG64(key).random_raw(n)
    return np.sort(np.argsort(u, kind="stable")[:k]).astype(np.int64)


def window_bounds(n: int, max_residues: int, policy: str) -> list[tuple[int, int]]:
    """[(lo, hi)) residue ranges scored in separate forward passes (module docstring)."""
    if n <= max_residues:
        return [(0, n)]
    if policy == "truncate":
        return [(0, max_residues)]
    m = math.ceil(n / max_residues)
    return [(i * n // m, (i + 1) * n // m) for i in range(m)]
