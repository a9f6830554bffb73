"""Word boundaries and space-initial tokens for word-level fusion across tokenizers (DESIGN section 7).

- A word boundary of a document is a character offset b > 0 inside it where the character before b is
  alphanumeric (`str.isalnum()`) and the character at b is an ASCII space (`boundaries`).
- `word_start` of a target token is 1 when the token starts exactly at a boundary. A token starts where the
  previous token of its document ends (the tokenizer's end offsets, made non-decreasing): start offsets are
  not used, since byte-level post-processors with `trim_offsets` move a token's start past its leading space.
  With no BOS the first token is not scored, but the second one still starts where the first one ends.
- A token is space-initial when the text it contributes inside a decoded sequence begins with an ASCII space:
  byte-level BPE ('Ġ' = the space byte), SentencePiece ('▁', the word-initial space, and the byte-fallback
  token <0x20>), added tokens by their content; special tokens never. `bow_logmass` (head.py) is the log of the
  probability mass of these ids: the probability that the next token starts a new word.
- `check_tokenizer` is the property test of DESIGN section 7 on a fixed, varied probe text: the tokenizer is
  byte-complete (no unknown token, decode(encode(text)) == text), every boundary is a token boundary, the token
  that starts there begins with a space, and no token (of the vocabulary, and on the probe) contains a letter
  or digit followed by a space. Word-level fusion of a tokenizer that fails it is refused with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re

import numpy as np

# Probe documents of `check_tokenizer` (NFC-stable, so normalising tokenizers round-trip them): punctuation,
# digits, newlines (\n, \r\n), runs of spaces, tabs, a leading and a trailing space, non-ASCII letters of
# several scripts, emoji (with a skin-tone modifier), symbols, code, contractions and URLs.
PROBE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog. It's 3.14159, not 2,718!",
    "Numbers: 1 22 333 4444 55555 and 1,000,000; dates 2024-01-31 and times 12:30 pm, 7 days, x 9.",
    "Several  spaces   between    words, tabs\tand\ttabs, a trailing space ",
    "Lines\nbreak here\n\nand a paragraph.\r\nWindows line ends too.\n word after a newline and a space",
    " A document that starts with a space, and ends without punctuation",
    "Non-ASCII: naïve café, émigré, Ærøskøbing, Zürich, Москва и Санкт-Петербург, 東京 と 大阪, العربية 123 ",
    "Emoji 🙂 and 👍🏽 between words 🙂x y🙂 z, symbols © ® ™ € £ ¥ and math ∑ x² ≤ 10 ½ Ⅻ",
    "Quotes \"double\" and 'single', (parentheses) [brackets] {braces} <angles>, dashes — and – and - here",
    "code: def f(x): return x + 1  # comment\n    indented line\tmixed \n",
    "Contractions: don't, won't, I'm, we've, they'll, she'd, it's, O'Neil's dog's bone",
    "URLs like https://example.com/a_b?c=1&d=2 and e-mails a.b@c.org; under_scores and CamelCase42 words",
    "x y z 1 2 3 a1 b2 c3 A B C ß ẞ ǅ",
)

_BOUNDARY = re.compile(r"(?<=[^\W_]) ")  # [^\W_] is exactly the characters for which str.isalnum() is true
_METASPACE = "\u2581"


def boundaries(text: str) -> np.ndarray:
    """(n,) int64, sorted: the word boundaries of one document (offsets b > 0, text[b - 1].isalnum(),
    text[b] == ' ')."""
    return np.fromiter((m.start() for m in _BOUNDARY.finditer(text)), dtype=np.int64)


def token_starts(ends: np.ndarray) -> np.ndarray:
    """Start offset of every token of a document: the (non-decreasing) end of the token before it, 0 first."""
    e = np.maximum.accumulate(np.asarray(ends, dtype=np.int64)) if len(ends) else np.zeros(0, np.int64)
    return np.concatenate([[0], e[:-1]]).astype(np.int64) if len(e) else e


def word_start(text: str, starts: np.ndarray, ends: np.ndarray | None = None) -> np.ndarray:
    """(n,) uint8: 1 where starts[i] (a token's start offset in `text`, one document) is a word boundary and,
    given the tokens' end offsets, the token ends after it (the later byte-level pieces of a character split
    across tokens end where the first one does: they start nothing)."""
    starts = np.asarray(starts, dtype=np.int64)
    hit = np.isin(starts, boundaries(text))
    if ends is not None:
        hit &= np.maximum.accumulate(np.asarray(ends, dtype=np.int64)) > starts
    return hit.astype(np.uint8)


# ------------------------------------------------------------------------------------------------ token texts
@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: byte-level BPE writes byte b as this printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _decoder_state(tokenizer) -> dict | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    dec = getattr(backend, "decoder", None)
    if dec is None:
        return None
    return json.loads(dec.__getstate__())


def _flatten(state: dict | None) -> list[dict]:
    if state is None:
        return []
    if state.get("type") == "Sequence":
        return [d for s in state.get("decoders", []) for d in _flatten(s)]
    return [state]


@dataclasses.dataclass(frozen=True)
class Conventions:
    """How a tokenizer's token strings become text: byte-level characters, SentencePiece's '▁', byte fallback."""
    byte_level: bool
    metaspace: str | None      # the character standing for a space ('▁'), if any
    byte_fallback: bool
    wordpiece_prefix: str | None
    generic: bool              # a decoder of another kind: decoded through the tokenizer's own decoder

    @property
    def name(self) -> str:
        parts = [n for n, on in (("byte-level", self.byte_level), (f"metaspace {self.metaspace!r}", self.metaspace),
                                 ("byte-fallback", self.byte_fallback), ("wordpiece", self.wordpiece_prefix),
                                 ("decoder", self.generic)) if on]
        return "+".join(parts) or "plain"


def conventions(tokenizer) -> Conventions:
    decs = _flatten(_decoder_state(tokenizer))
    kinds = {d.get("type") for d in decs}
    meta = None
    for d in decs:
        if d.get("type") == "Metaspace":
            meta = d.get("replacement") or _METASPACE
        elif d.get("type") == "Replace" and d.get("content") == " ":
            pat = d.get("pattern") or {}
            meta = pat.get("String") or meta
    wp = next((d.get("prefix", "##") for d in decs if d.get("type") == "WordPiece"), None)
    known = {"ByteLevel", "Metaspace", "Replace", "ByteFallback", "Fuse", "Strip", "WordPiece"}
    return Conventions("ByteLevel" in kinds, meta, "ByteFallback" in kinds, wp, bool(kinds - known))


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def token_texts(tokenizer) -> list[bytes | None]:
    """UTF-8 bytes each id contributes to a decoded sequence when it is not the sequence's first token (a
    SentencePiece word-initial '▁' is its space there); None for special tokens and ids without a string.

    Byte-level tokens map character by character to bytes (a token may hold part of a character); added
    tokens contribute their content; other decoders are applied to the pair [anchor, token]."""
    n = len(tokenizer)
    strings = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = _special_ids(tokenizer)
    added = {int(i): t.content for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
    conv = conventions(tokenizer)
    u2b = _unicode_to_byte()
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    out: list[bytes | None] = []
    for i, s in enumerate(strings):
        if s is None or i in special:
            out.append(None)
        elif i in added:
            out.append(added[i].encode("utf-8"))
        elif conv.byte_level and all(c in u2b for c in s):
            out.append(bytes(u2b[c] for c in s))
        elif conv.byte_fallback and _BYTE_TOKEN.fullmatch(s):
            out.append(bytes([int(s[3:5], 16)]))
        elif conv.metaspace or conv.byte_level:
            out.append((s.replace(conv.metaspace, " ") if conv.metaspace else s).encode("utf-8"))
        elif conv.wordpiece_prefix:
            out.append((s[len(conv.wordpiece_prefix):] if s.startswith(conv.wordpiece_prefix) else " " + s).encode())
        elif conv.generic and decoder is not None:
            out.append(decoder.decode(["a", s])[1:].encode("utf-8"))
        else:
            out.append(s.encode("utf-8"))
    return out


def space_initial_mask_from_texts(texts: list[bytes | None], n_classes: int | None = None) -> np.ndarray:
    n = len(texts) if n_classes is None else int(n_classes)
    mask = np.zeros(n, bool)
    for i, t in enumerate(texts[:n]):
        if t is not None and t[:1] == b" ":
            mask[i] = True
    return mask


def space_initial_ids(tokenizer) -> np.ndarray:
    """Sorted int64 ids of the tokens whose text begins with an ASCII space (special tokens excluded)."""
    return np.flatnonzero(space_initial_mask_from_texts(token_texts(tokenizer))).astype(np.int64)


def space_initial_mask(tokenizer, n_classes: int) -> np.ndarray:
    """(n_classes,) bool over the model's logits: ids at or past the tokenizer's length (padding) are False."""
    return space_initial_mask_from_texts(token_texts(tokenizer), n_classes)


def space_initial_hash(ids: np.ndarray) -> str:
    """sha256 of the JSON list of the space-initial ids (recorded as tokenizer.space_initial_hash)."""
    return "sha256:" + hashlib.sha256(json.dumps([int(i) for i in ids]).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ property test
def _alnum_then_space(s: str) -> bool:
    return _BOUNDARY.search(s) is not None


def check_tokenizer(tokenizer, texts: tuple[str, ...] = PROBE_TEXTS,
                    token_bytes: list[bytes | None] | None = None) -> tuple[bool, str]:
    """The tokenizer requirement of DESIGN section 7: (True, summary) or (False, the first reason it fails).
    token_bytes: `token_texts(tokenizer)` if already computed."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not getattr(tokenizer, "is_fast", False):
        return False, f"tokenizer {name!r} is not a fast tokenizer (no offsets)"
    model = json.loads(tokenizer.backend_tokenizer.model.__getstate__())
    unk = tokenizer.unk_token
    if model.get("type") in ("WordLevel", "WordPiece") and unk is not None:
        return False, (f"{model['type']} vocabulary with the unknown token {unk!r}: not byte-complete (text outside "
                       "the vocabulary has no probability), so word probabilities are undefined")
    texts_ = token_texts(tokenizer) if token_bytes is None else token_bytes
    mask = space_initial_mask_from_texts(texts_)
    if not mask.any():
        return False, "no token begins with a space: words are not delimited by space-initial tokens"
    vocab_bad = [t.decode("utf-8", "replace") for t in texts_ if t is not None and b" " in t
                 and _alnum_then_space(t.decode("utf-8", "replace"))]
    if vocab_bad:
        return False, (f"{len(vocab_bad)} vocabulary tokens contain a letter or digit followed by a space "
                       f"(e.g. {vocab_bad[:3]!r}): a word boundary can fall inside a token")
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                    return_attention_mask=False, split_special_tokens=True)
    unk_id = tokenizer.unk_token_id
    for k, (ids, offs, text) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], texts)):
        where = f"probe text {k} ({text[:24]!r}...)"
        if unk_id is not None and unk_id in ids:
            return False, f"{where} gives the unknown token {unk!r}: not byte-complete"
        dec = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if dec != text:
            return False, f"decode(encode(text)) != text for {where}: got {dec[:40]!r}; the tokenizer changes text"
        ends = np.asarray([o[1] for o in offs], dtype=np.int64)
        e = np.maximum.accumulate(ends) if len(ends) else ends
        starts = token_starts(ends)
        for j, i in enumerate(ids):
            piece = text[starts[j]:e[j]]
            own = texts_[i].decode("utf-8", "replace") if texts_[i] is not None else ""
            if _alnum_then_space(piece) or _alnum_then_space(own):
                return False, (f"token {tokenizer.convert_ids_to_tokens(i)!r} of {where} contains a letter or "
                               "digit followed by a space: a word boundary falls inside a token")
        for b in boundaries(text):
            at = np.flatnonzero((starts == b) & (e > b))
            if len(at) == 0:
                return False, (f"the word boundary at offset {int(b)} of {where} ({text[max(0, b - 8):b + 8]!r}) "
                               "is not a token boundary")
            i = ids[int(at[0])]
            if not mask[i]:
                return False, (f"the token {tokenizer.convert_ids_to_tokens(i)!r} starting at the word boundary "
                               f"{int(b)} of {where} does not begin with a space")
    conv = conventions(tokenizer)
    return True, (f"ok: {int(mask.sum())} space-initial ids ({conv.name}); every word boundary of {len(texts)} "
                  "probe texts is a token boundary at a space-initial token")


REEXTRACT = ("re-extract the store with a tokenizer that passes the word-boundary property test "
             "(pipeline.extraction.words.check_tokenizer), extract.word_arrays=auto|true and overwrite=true")


def plan_word_arrays(mode, tokenizer, n_classes: int) -> tuple[dict, np.ndarray | None]:
    """Whether a text store gets bow_logmass and word_start (extract.word_arrays: 'auto' | True | False).

    Returns (the attributes recorded in the store's `tokenizer` section, the (n_classes,) bool mask of the
    space-initial ids or None when the arrays are not written). mode True with a tokenizer that fails the
    property test raises ConfigError with the reason."""
    from .errors import ConfigError

    if mode is False:
        return {"word_arrays": {"mode": False, "written": False, "reason": "extract.word_arrays=false"}}, None
    texts = token_texts(tokenizer) if getattr(tokenizer, "is_fast", False) else None
    ok, reason = check_tokenizer(tokenizer, token_bytes=texts)
    info = {"word_arrays": {"mode": mode, "written": ok, "reason": reason}}
    if ok:
        ids = np.flatnonzero(space_initial_mask_from_texts(texts, int(n_classes))).astype(np.int64)
        info.update(space_initial_hash=space_initial_hash(ids), n_space_initial=int(len(ids)))
        mask = np.zeros(int(n_classes), bool)
        mask[ids] = True
        return info, mask
    if mode is True:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(f"extract.word_arrays=true but tokenizer {name!r} fails the word-boundary property test: "
                          f"{reason}; use extract.word_arrays=auto (records the reason) or false")
    return info, None
