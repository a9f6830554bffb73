"""Task datasets (issue 5): LAMBADA's last word and multiple choice (CBT-CN/NE, ARC-Easy/Challenge).

A task item is a context and one or more options. Every (item, option) becomes one segment of the token
stream, [BOS] + tok(context) + the option's continuation tokens, and only the continuation is scored; the
store layout (positions ordered by item, option, token; `item_id`, `option_id`; the item and option tables)
and the single-model metrics are defined in `pipeline/store/tasks.py`.

Pairs are tokenised as lm-evaluation-harness's `_encode_pair`: whitespace at the end of the context moves
to the front of the continuation; whole = tok(context + continuation), ctx = tok(context) (no special
tokens; strings of special tokens in the text are tokenised as text, as for documents), and the
continuation's tokens are whole[len(ctx):], fed after ctx. n_chars / n_bytes of the scored tokens split the
continuation text (delimiter included) over its tokens by their offsets, so they sum to its length; the option tables hold the option text's length WITHOUT the delimiter (lm-evaluation-
harness's acc_norm divides by len(choice)).

Sources and formats (each loader reads the hub layout and the original release; a local copy in either
format is read with `dataset.path=FILE_OR_DIR`):

* ``lambada_last_word``: EleutherAI/lambada_openai (OpenAI's detokenised LAMBADA test set), records with
  a `text` field (.jsonl / .json / .parquet). Context = " ".join(text.split(" ")[:-1]), option =
  " " + text.split(" ")[-1] (lm-evaluation-harness's lambada_openai). Kind `last_word`, one option, label 0.
* ``cbt``: cam-cst/cbt configs CN / NE: records {sentences[20], question (with the blank "XXXXX"), answer,
  options[10]} (.parquet / .jsonl / .json), or the release text (cbtest_CN_test_2500ex.txt: lines
  "1 ..." to "20 ...", then "21 query<TAB>answer<TAB><TAB>c1|...|c10", a blank line between items), parsed as
  the hub's own conversion did. Protocols: ``gpt2`` (the GPT-2 paper: context = the sentences joined with
  " ", then " " and the query up to the blank; option = candidate + the rest of the query) and
  ``whole_query`` (context = the sentences joined with " "; option = " " + the query with the blank filled).
  They differ only in what is scored (whole_query also scores the query's prefix, the same for every
  option, which shifts every option's sum but can change the tokenisation at the blank).
* ``arc``: allenai/ai2_arc configs ARC-Easy / ARC-Challenge: records {id, question, choices{text, label},
  answerKey} (.parquet / .jsonl), or AI2's release jsonl ({id, question{stem, choices[{text, label}]},
  answerKey}). Context "Question: {question}\\nAnswer:", option " " + choice (lm-evaluation-harness's
  arc_easy / arc_challenge).

Bad input: a label that is not among its item's options, or a cloze query without exactly one blank, is a
TaskDataError naming the item. Items that cannot be scored are skipped and counted (the store's `task`
attribute lists them by reason with their source indices): ``no_last_word`` (a LAMBADA passage without a
space, or whose last word or context is empty), ``empty_option`` (an option whose text is empty or blank, or
whose continuation tokenises to nothing; the whole item is skipped, as its options must all be scored),
``empty_context`` (with bos=none, a context with no token: nothing would predict the first option token).
Every item skipped is an EmptyDatasetError.

text_sha256 of a task split: sha256 of the canonical JSON (sorted keys, separators "," and ":", UTF-8, non-
ASCII kept) of the list of its items in the hub layout, in source order, after `dataset.n_documents`:
the same for the parquet and the original release of one split (protocol-independent; the protocol is
recorded beside it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..logs import warn_once
from .config import DatasetSpec
from .datasets import _resolve_files, read_text
from .errors import ConfigError, DatasetChecksumError, DatasetNotFoundError, EmptyDatasetError, TaskDataError
from .stream import (
    Protocol,
    Segment,
    TokenStream,
    _byte_offsets,
    _encode,
    _round_trip,
    _spans,
    check_tokenizer,
)

log = logging.getLogger(__name__)

BLANK = "XXXXX"


@dataclasses.dataclass(frozen=True)
class TaskDef:
    kind: str                       # pipeline.store.tasks.KINDS
    protocols: tuple[str, ...]      # the first is the default
    metrics: tuple[str, ...]        # the columns tables show (pipeline.store.tasks.task_metrics computes more)


TASKS: dict[str, TaskDef] = {
    "lambada_last_word": TaskDef("last_word", ("lm_eval",), ("word_ppl", "token_ppl", "acc")),
    "cbt": TaskDef("multiple_choice", ("gpt2", "whole_query"), ("acc",)),
    "arc": TaskDef("multiple_choice", ("lm_eval",), ("acc", "acc_norm")),
}


@dataclasses.dataclass(frozen=True)
class TaskItem:
    source_index: int
    context: str
    continuations: tuple[str, ...]  # the text after the context, delimiter included (" " + choice)
    options: tuple[str, ...]        # the option text without the delimiter (its length normalises acc_norm)
    label: int


@dataclasses.dataclass
class TaskData:
    name: str
    kind: str
    protocol: str
    metrics: tuple[str, ...]
    items: list[TaskItem]
    n_source_items: int
    skipped: dict[str, list[int]]   # reason -> source indices (the loader's; tokenisation adds its own)
    meta: dict                      # the store's `dataset` section


@dataclasses.dataclass
class TaskStream:
    stream: TokenStream
    tables: dict[str, np.ndarray]   # pipeline.store.schema.TASK_TABLES
    attrs: dict                     # the store's `task` attribute


def is_task(spec: DatasetSpec) -> bool:
    return spec.loader in TASKS


def task_protocol(spec: DatasetSpec) -> str:
    td = TASKS.get(spec.loader)
    if td is None:
        raise ConfigError(f"dataset.loader={spec.loader!r} is not a task loader; task loaders: {sorted(TASKS)}")
    protocol = spec.task_protocol or td.protocols[0]
    if protocol not in td.protocols:
        raise ConfigError(f"dataset.task_protocol={protocol!r} for dataset {spec.name!r}: use one of {list(td.protocols)}")
    return protocol


def items_sha256(records: list[dict]) -> str:
    blob = json.dumps(records, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- reading the formats


def _rows(path: str) -> list[dict]:
    """Records of a .parquet / .jsonl / .json file."""
    if not os.path.exists(path):
        raise DatasetNotFoundError(f"dataset file {path} does not exist: check dataset.path")
    if path.endswith(".parquet"):
        import polars as pl

        return pl.read_parquet(path).to_dicts()
    text = read_text(path)
    try:
        if path.endswith(".json"):
            data = json.loads(text)
            return data if isinstance(data, list) else list(data.values())
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise DatasetNotFoundError(f"{path} is not valid JSON lines ({e}); a task file is .parquet, .jsonl or "
                                   ".json (CBT also the release .txt)") from None


def _need(rec, fields: tuple[str, ...], path: str, i: int) -> None:
    if not isinstance(rec, dict) or any(f not in rec for f in fields):
        have = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
        raise DatasetNotFoundError(f"record {i} of {path} lacks field(s) {list(fields)} (has {have}); "
                                   "is this the right file for this dataset?")


def read_lambada(path: str, field: str = "text") -> list[dict]:
    rows = _rows(path)
    for i, r in enumerate(rows):
        _need(r, (field,), path, i)
    return [{"text": r[field] or ""} for r in rows]


def parse_cbt_text(text: str) -> list[dict]:
    """The CBT release format, parsed as the hub's conversion (datasets' cbt.py) did: a line starting with
    "21" is the query line (query, answer and the '|'-separated candidates, tab-separated), any other
    non-blank line is a context sentence with its leading number removed."""
    items, sentences = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        number = line.split()[0]
        if number == "21":
            fields = line.split("\t")
            if len(fields) < 3:
                raise TaskDataError(f"CBT item {len(items)}: query line {line[:60]!r}... has {len(fields)} tab-"
                                    "separated fields, expected 'query<TAB>answer<TAB><TAB>candidates'")
            items.append({"sentences": sentences, "question": fields[0][len(number):].strip(),
                          "answer": fields[1].strip(), "options": fields[-1].strip().split("|")})
            sentences = []
        else:
            sentences.append(line[len(number):].strip())
    if sentences:
        raise TaskDataError(f"CBT text ends with {len(sentences)} context sentences and no query line '21 ...': "
                            "is the file truncated?")
    return items


def read_cbt(path: str) -> list[dict]:
    if path.endswith(".txt"):
        return parse_cbt_text(read_text(path))
    rows = _rows(path)
    out = []
    for i, r in enumerate(rows):
        _need(r, ("sentences", "question", "answer", "options"), path, i)
        out.append({"sentences": list(r["sentences"]), "question": r["question"], "answer": r["answer"],
                    "options": list(r["options"])})
    return out


def read_arc(path: str) -> list[dict]:
    out = []
    for i, r in enumerate(_rows(path)):
        _need(r, ("question", "answerKey"), path, i)
        q = r["question"]
        if isinstance(q, dict):  # AI2's release: {"question": {"stem", "choices": [{"text", "label"}]}}
            if "stem" not in q or "choices" not in q:
                raise DatasetNotFoundError(f"record {i} of {path}: question lacks 'stem' or 'choices'")
            text = [c["text"] for c in q["choices"]]
            label = [c["label"] for c in q["choices"]]
            q = q["stem"]
        else:  # the hub layout: {"question": str, "choices": {"text": [...], "label": [...]}}
            _need(r, ("choices",), path, i)
            text, label = list(r["choices"]["text"]), list(r["choices"]["label"])
        out.append({"id": r.get("id"), "question": q, "choices": {"text": text, "label": label},
                    "answerKey": r["answerKey"]})
    return out


READERS = {"lambada_last_word": read_lambada, "cbt": read_cbt, "arc": read_arc}


# ---------------------------------------------------------------- records -> items


def _where(name: str, i: int, rec: dict) -> str:
    ident = f", id {rec['id']!r}" if rec.get("id") else ""
    return f"dataset {name!r} item at source index {i}{ident}"


_FIX = "fix the source (or pass dataset.path=<a corrected copy>)"


def lambada_item(rec: dict, i: int, protocol: str, name: str) -> TaskItem | str:
    words = rec["text"].split(" ")
    context = " ".join(words[:-1])
    if len(words) < 2 or not words[-1].strip() or not context.strip():
        return "no_last_word"
    return TaskItem(i, context, (" " + words[-1],), (words[-1],), 0)


def cbt_item(rec: dict, i: int, protocol: str, name: str) -> TaskItem | str:
    q, options, answer = rec["question"], list(rec["options"]), rec["answer"]
    if q.count(BLANK) != 1:
        raise TaskDataError(f"{_where(name, i, rec)}: the query has {q.count(BLANK)} blanks {BLANK!r}, expected "
                            f"exactly 1 ({q[:80]!r}); {_FIX}")
    if answer not in options:
        raise TaskDataError(f"{_where(name, i, rec)}: answer {answer!r} is not among its options {options}; {_FIX}")
    if any(not o.strip() for o in options):
        return "empty_option"
    passage = " ".join(rec["sentences"])
    b = q.index(BLANK)
    if protocol == "gpt2":
        opts = tuple(o + q[b + len(BLANK):] for o in options)
        return TaskItem(i, passage + " " + q[:b], opts, opts, options.index(answer))
    opts = tuple(q[:b] + o + q[b + len(BLANK):] for o in options)
    return TaskItem(i, passage, tuple(" " + o for o in opts), opts, options.index(answer))


def arc_item(rec: dict, i: int, protocol: str, name: str) -> TaskItem | str:
    text, label = rec["choices"]["text"], rec["choices"]["label"]
    if len(text) != len(label) or not text:
        raise TaskDataError(f"{_where(name, i, rec)}: {len(text)} choice texts but {len(label)} labels; {_FIX}")
    if rec["answerKey"] not in label:
        raise TaskDataError(f"{_where(name, i, rec)}: answerKey {rec['answerKey']!r} is not among its choice labels "
                            f"{label}; {_FIX}")
    if any(not t.strip() for t in text):
        return "empty_option"
    return TaskItem(i, f"Question: {rec['question']}\nAnswer:", tuple(" " + t for t in text), tuple(text),
                    label.index(rec["answerKey"]))


MAKERS = {"lambada_last_word": lambada_item, "cbt": cbt_item, "arc": arc_item}


def load_task(spec: DatasetSpec) -> TaskData:
    """Read the split, check its pinned sha256, turn records into items (skipping what cannot be scored)."""
    protocol = task_protocol(spec)
    td = TASKS[spec.loader]
    files, source, revision = _resolve_files(spec)
    read = READERS[spec.loader]
    records = [r for f in files for r in (read(f, spec.text_field) if read is read_lambada else read(f))]
    capped = spec.n_documents is not None
    if capped:
        records = records[: spec.n_documents]
    if not records:
        raise EmptyDatasetError(f"dataset {spec.name!r} split {spec.split!r} from {source} has no items; "
                                "check dataset.path / dataset.split")
    digest = items_sha256(records)
    expected = None if capped else (spec.text_sha256 or {}).get(spec.split)
    if expected and expected != digest:
        raise DatasetChecksumError(
            f"dataset {spec.name!r} split {spec.split!r}: items sha256 {digest} != {expected} recorded in the "
            "config; the source changed or the local copy differs: check dataset.revision/path")
    if not (spec.text_sha256 or {}).get(spec.split):  # capped with a pin: the pin is of the whole split, unchecked
        log.info("dataset %s/%s text_sha256=%s (not pinned in the config yet)", spec.name, spec.split, digest)
    items: list[TaskItem] = []
    skipped: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        out = MAKERS[spec.loader](rec, i, protocol, spec.name)
        if isinstance(out, str):
            skipped.setdefault(out, []).append(i)
        else:
            items.append(out)
    if not items:
        raise EmptyDatasetError(f"every item of dataset {spec.name!r} split {spec.split!r} ({len(records)}) was "
                                f"skipped: { {r: len(v) for r, v in sorted(skipped.items())} }; check the data")
    meta = {"name": spec.name, "split": spec.split, "text_sha256": digest, "text_sha256_of": "items_json",
            "n_documents": len(records), "source": source, "revision": revision or spec.revision,
            "files": [Path(f).name for f in files]}
    return TaskData(spec.name, td.kind, protocol, td.metrics, items, len(records), skipped, meta)


# ---------------------------------------------------------------- items -> token stream


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-evaluation-harness: trailing whitespace of the context goes to the front of the continuation."""
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


def build_task_stream(task: TaskData, tokenizer, protocol: Protocol, bos_id: int | None) -> TaskStream:
    """One segment per (item, option): [BOS] + ctx + continuation tokens, the continuation scored."""
    check_tokenizer(tokenizer, protocol, bos_id)
    if protocol.scoring != "independent":
        raise ConfigError(f"task dataset {task.name!r} scores every item independently; "
                          f"dataset.protocol.scoring={protocol.scoring!r} is not allowed: use independent")
    use_bos = protocol.bos == "document"
    ctx_texts, cont_texts = [], []
    for it in task.items:
        pairs = [split_pair(it.context, c) for c in it.continuations]
        ctx_texts.append(pairs[0][0])
        cont_texts.extend(c for _, c in pairs)
    ctx_ids, _ = _encode(tokenizer, ctx_texts) if ctx_texts else ([], [])
    owner = [j for j, it in enumerate(task.items) for _ in it.continuations]   # item of every option row
    wholes = [ctx_texts[j] + c for j, c in zip(owner, cont_texts)]
    whole_ids, whole_offs = _encode(tokenizer, wholes) if wholes else ([], [])
    n_inexact = _round_trip(tokenizer, whole_ids, wholes) if wholes else 0
    exact = n_inexact == 0
    L = protocol.context_length
    skipped = {r: list(v) for r, v in task.skipped.items()}
    segments: list[Segment] = []
    tables: dict[str, list[int]] = {n: [] for n in ("item_label", "item_n_options", "item_source_index",
                                                    "option_n_chars", "option_n_bytes")}
    n_text = n_mismatch = 0
    k = 0
    for j, it in enumerate(task.items):
        rows = range(k, k + len(it.continuations))
        k += len(it.continuations)
        ctx = list(ctx_ids[j])
        if not use_bos and not ctx:
            skipped.setdefault("empty_context", []).append(it.source_index)
            continue
        conts = [list(whole_ids[r][len(ctx):]) for r in rows]
        if any(not c for c in conts):
            skipped.setdefault("empty_option", []).append(it.source_index)
            continue
        item = len(tables["item_label"])
        prefix = ([bos_id] if use_bos else []) + ctx
        # Only the last L tokens before the continuation are ever fed (the first window starts at the first
        # continuation token and holds at most L inputs), so the rest is not kept: identical windows, less memory.
        prefix = prefix[max(0, len(prefix) - L):]
        for o, (r, cont) in enumerate(zip(rows, conts)):
            n_mismatch += list(whole_ids[r][:len(ctx)]) != ctx
            text = cont_texts[r]
            seq = np.asarray(prefix + cont, dtype=np.int64)
            T, P = len(seq), len(prefix)
            scored = np.zeros(T, bool)
            scored[P:] = True
            ends = np.zeros(T, np.int64)
            ends[P:] = np.maximum(np.asarray([e for _, e in whole_offs[r][len(ctx):]], np.int64) - len(ctx_texts[j]), 0)
            nc, nb = _spans(ends, scored, len(text), _byte_offsets(text))
            n_text += int(nc.sum())
            ids = np.full(T, item, np.int32)
            segments.append(Segment(seq, scored, nc, nb, ids, item_id=ids, option_id=np.full(T, o, np.int32)))
            tables["option_n_chars"].append(len(it.options[o]))
            tables["option_n_bytes"].append(len(it.options[o].encode("utf-8")))
        tables["item_label"].append(it.label)
        tables["item_n_options"].append(len(it.continuations))
        tables["item_source_index"].append(it.source_index)
    counts = {r: len(v) for r, v in sorted(skipped.items())}
    if not segments:
        raise EmptyDatasetError(f"every item of dataset {task.name!r} ({task.n_source_items}) was skipped: {counts}; "
                                "check the data, or dataset.protocol.bos=document for empty contexts")
    if counts:
        log.warning("dataset %s: %d of %d items skipped %s", task.name, sum(counts.values()), task.n_source_items,
                    counts)
    if n_mismatch:
        log.info("dataset %s: for %d options tok(context + continuation) does not start with tok(context); the "
                 "continuation tokens are whole[len(ctx):] as in lm-evaluation-harness", task.name, n_mismatch)
    if not exact:
        warn_once(log, "round_trip_items", "decode(encode(text)) != text for %d of %d options: n_chars/n_bytes follow "
                  "the tokenizer's offsets", n_inexact, len(wholes))
    n_items = len(tables["item_label"])
    attrs = {"name": task.name, "kind": task.kind, "protocol": task.protocol, "metrics": list(task.metrics),
             "n_items": n_items, "n_source_items": task.n_source_items, "n_options": len(tables["option_n_chars"]),
             "skipped": counts, "skipped_source_index": {r: sorted(v) for r, v in sorted(skipped.items())},
             "n_context_boundary_retokenised": n_mismatch}
    arrays = {n: np.asarray(v, np.int32) for n, v in tables.items()}
    return TaskStream(TokenStream(segments, protocol, exact, n_text), arrays, attrs)
