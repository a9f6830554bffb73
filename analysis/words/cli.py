"""Word-level rows of the sweep CLI (`python -m analysis.sweep`, DESIGN.md section 7).

Every two text stores of different models on one text (dataset, split, text sha256, scoring, separator) are fused
at the word level: across tokenizers (where the token-level mixture is undefined) and within one (beside the
token-level row: a different, coarser model). Their rows carry ``level = "word"`` and BPB / BPC / word PPL only;
token rows get ``level = "token"``. A pair refused at the word level (a vocabulary with an unknown token, stores
extracted before bow_logmass / word_start) is listed as skipped with the reason when it has no token-level row.
"""

from __future__ import annotations

import itertools
import logging
import math
import re

import polars as pl

from ..table import markdown
from .pair import WordPair
from .segments import SAME_TEXT, word_fusion_refusal

log = logging.getLogger(__name__)


def _name(s) -> str:
    return str(s.model.get("name", s.path))


def _tok(s) -> str:
    return str(s.attrs.get("tokenizer", {}).get("name", "unknown tokenizer"))


def word_family(a, b) -> str:
    """The pairs-table family of a word-level pair: both tokenizers."""
    ta, tb = _tok(a), _tok(b)
    return f"word level: {ta}" if ta == tb else f"word level: {ta} + {tb}"


def add_word_pairs(stores, cfg, weights, pairs: dict, found) -> list[pl.DataFrame]:
    """Adds word-level entries to ``pairs`` (keys like the token rows', family `word_family`), marks every row with
    its level, drops the 'different tokenizer' skips that a word-level row now covers, and returns the sweeps."""
    for entry in pairs.values():
        entry["row"].setdefault("level", "token")
    text = [s for s in stores if s.kind == "text" and "task" not in s.attrs]
    groups: dict[tuple, list] = {}
    for s in text:
        groups.setdefault(tuple(str(g(s)) for _, g in SAME_TEXT), []).append(s)
    sweeps, covered = [], set()
    for members in groups.values():
        for a, b in itertools.combinations(members, 2):
            if _name(a) == _name(b):
                continue
            ds, split = a.dataset.get("name"), a.dataset.get("split")
            same_tok = a.attrs.get("tokenizer", {}).get("vocab_hash") == b.attrs.get("tokenizer", {}).get("vocab_hash")
            try:
                reason = word_fusion_refusal(a) or word_fusion_refusal(b)
                if reason is not None:
                    raise ValueError(reason)
                wp = WordPair(a, b, order=cfg.order)
                opt = wp.optimum()
            except Exception as e:  # noqa: BLE001 (a refusal or a damaged store: the reason goes to the table)
                if not same_tok:  # the table's rows name the models: their store paths would only repeat them
                    why = str(e).replace(f"{a.path}: ", "").replace(f"{b.path}: ", "")
                    _skip(found, a, b, ds, split, f"word level: {why}")
                else:
                    log.info("no word-level row for %s + %s: %s", _name(a), _name(b), e)
                continue
            covered.add(frozenset((_name(a), _name(b), str(ds), str(split))))
            fam = word_family(wp.primary, wp.secondary)
            k = wp.param_ratio(cfg.param_count)
            d = wp.dropped["a"]
            pairs[(wp.names, fam, ds, split)] = {"pair": wp, "row": {
                "primary": wp.names[0], "secondary": wp.names[1], "family": fam, "level": "word",
                "dataset": ds, "split": split, "k": k, "k_from": cfg.param_count,
                "k_sort": k if math.isfinite(k) else math.inf, "flags": ",".join(f for f, _, _ in wp.flags),
                "n_segments": wp.data.n, "bytes_left_out": d["bytes"],
                "w_nll": opt.w_nll, "alpha_nll": opt.alpha_nll, "d_nll": opt.d_nll,
                "primary_bpb": opt.primary["bpb"], "secondary_bpb": opt.secondary["bpb"],
                "primary_word_ppl": opt.primary["word_ppl"], "secondary_word_ppl": opt.secondary["word_ppl"],
                "fused_bpb": opt.at_nll["bpb"], "fused_bpc": opt.at_nll["bpc"], "fused_word_ppl": opt.at_nll["word_ppl"],
                **{f"impr_{m}": v for m, v in opt.improvement.items()},
            }}
            if cfg.write_sweeps:
                sweeps.append(wp.sweep(weights).with_columns(
                    primary=pl.lit(wp.names[0]), secondary=pl.lit(wp.names[1]), dataset=pl.lit(ds),
                    split=pl.lit(split), level=pl.lit("word")))
    found.skipped[:] = [r for r in found.skipped if not (
        frozenset((r["a"], r["b"], str(r["dataset"]), str(r["split"]))) in covered
        and "different tokenizer" in str(r["reason"]))]
    if sweeps:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        pl.concat(sweeps).write_parquet(cfg.out_dir / "word_sweeps.parquet")
    return sweeps


_VOCAB_HASHES = re.compile(r"different tokenizer\.vocab_hash: '([0-9a-f]{8})[0-9a-f]*' vs '([0-9a-f]{8})[0-9a-f]*' "
                           r"\(different tokenizer\)")


def _short_hashes(m: re.Match) -> str:
    return f"different tokenizers (vocab_hash {m.group(1)} vs {m.group(2)})"


def _skip(found, a, b, ds, split, reason: str) -> None:
    """Say why a pair across tokenizers has no word-level row: on its 'different tokenizer' skip, else a new one."""
    key = frozenset((_name(a), _name(b), str(ds), str(split)))
    for r in found.skipped:
        if frozenset((r["a"], r["b"], str(r["dataset"]), str(r["split"]))) == key:
            r["reason"] = f"{_VOCAB_HASHES.sub(_short_hashes, r['reason'])}; {reason}"
            return
    found.skipped.append({"a": _name(a), "b": _name(b), "dataset": ds, "split": split, "reason": reason})


def heldout_row(pair: WordPair, valid: WordPair) -> dict:
    h = pair.heldout(valid)
    return {"heldout_w_nll": h.w_nll, "heldout_alpha_nll": h.alpha_nll,
            **{f"heldout_impr_{m}": v for m, v in h.improvement.items()}}


def bootstrap_columns(pair: WordPair, heldout_w, n_resamples: int, seed: int) -> dict:
    """The interval columns of a word-level pairs row (documents resampled), or bootstrap_note with the reason."""
    from ..bootstrap import BootstrapError, table_columns

    try:
        frame = pair.bootstrap(n_resamples=n_resamples, seed=seed, heldout_w=heldout_w)
    except BootstrapError as e:
        return {"bootstrap_note": f"word level: {e}"}
    return {**table_columns(frame), "bootstrap_resamples": n_resamples, "bootstrap_seed": seed}


def word_table(prs: pl.DataFrame, valid_splits=()) -> list[str]:
    """Markdown lines of the word-level rows (BPB / BPC / word PPL only), or none."""
    if not prs.height or "level" not in prs.columns:
        return []
    w = prs.filter((pl.col("level") == "word") & ~pl.col("split").is_in(list(valid_splits)))
    if not w.height:
        return []
    cols = [c for c in ("primary", "secondary", "family", "dataset", "split", "level", "n_segments", "alpha_nll",
                        "d_nll", "primary_bpb", "secondary_bpb", "fused_bpb", "impr_bpb", "impr_bpc", "impr_word_ppl",
                        "heldout_alpha_nll", "heldout_impr_bpb", "bytes_left_out") if c in w.columns]
    return ["## Word-level fusion (level = word: BPB / BPC / word PPL only; improvements in % of the best single "
            "model)", "", markdown(w.select(cols)), ""]
