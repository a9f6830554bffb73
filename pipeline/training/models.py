"""The small reference models of the paper's section 5.3, as Hugging Face causal LMs.

Registered with the Auto classes on import, so a saved directory loads through
``AutoModelForCausalLM.from_pretrained`` exactly like a hub model (the extraction stage imports this module).

* ``ARRNNForCausalLM`` (model_type "ar-rnn"): embedding(E) -> dropout -> LSTM/GRU(hidden H, layers) -> dropout
  -> linear decoder to the vocabulary; the layout of PyTorch's word_language_model example. No maximum
  length: evaluated over a whole document the state is carried across it, as in training.
* ``ARTransformerForCausalLM`` (model_type "ar-transformer"): embedding(E) * sqrt(E) + sinusoidal positions
  over ``seq_len`` tokens -> causal TransformerEncoder (nhead, feed-forward, layers) -> linear decoder.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast


class ARRNNConfig(PretrainedConfig):
    model_type = "ar-rnn"

    def __init__(self, vocab_size: int = 10_000, cell: str = "lstm", embed_size: int = 128, hidden_size: int = 128,
                 num_layers: int = 1, dropout: float = 0.2, **kwargs):
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell={cell!r}: use lstm or gru")
        self.vocab_size, self.cell, self.embed_size = vocab_size, cell, embed_size
        self.hidden_size, self.num_layers, self.dropout = hidden_size, num_layers, dropout
        super().__init__(**kwargs)


class ARTransformerConfig(PretrainedConfig):
    model_type = "ar-transformer"

    def __init__(self, vocab_size: int = 10_000, embed_size: int = 128, nhead: int = 2, ffn_size: int = 200,
                 num_layers: int = 1, dropout: float = 0.2, seq_len: int = 35, **kwargs):
        self.vocab_size, self.embed_size, self.nhead, self.ffn_size = vocab_size, embed_size, nhead, ffn_size
        self.num_layers, self.dropout, self.seq_len = num_layers, dropout, seq_len
        self.max_position_embeddings = seq_len
        super().__init__(**kwargs)


class _Base(PreTrainedModel):
    base_model_prefix = "model"
    _no_split_modules: list[str] = []

    def _init_weights(self, module):
        # Uniform init of embeddings and decoder as in word_language_model; recurrent/attention layers keep
        # PyTorch's defaults.
        if isinstance(module, nn.Embedding):
            nn.init.uniform_(module.weight, -0.1, 0.1)
        elif isinstance(module, nn.Linear) and module.out_features == self.config.vocab_size:
            nn.init.uniform_(module.weight, -0.1, 0.1)
            nn.init.zeros_(module.bias)


class ARRNNModel(_Base):
    config_class = ARRNNConfig

    def __init__(self, config: ARRNNConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.embed_size)
        self.drop = nn.Dropout(config.dropout)
        rnn = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn(config.embed_size, config.hidden_size, config.num_layers, batch_first=True,
                       dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=None, **kwargs):
        # input_ids (B, T) -> last_hidden_state (B, T, H); past_key_values: the recurrent state to start from
        x = self.drop(self.embed(input_ids))
        out, state = self.rnn(x, past_key_values)
        return BaseModelOutputWithPast(last_hidden_state=out, past_key_values=state if use_cache else None)


class ARRNNForCausalLM(_Base):
    config_class = ARRNNConfig

    def __init__(self, config: ARRNNConfig):
        super().__init__(config)
        self.model = ARRNNModel(config)
        self.drop = nn.Dropout(config.dropout)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self):
        return self.decoder

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=None, labels=None,
                output_hidden_states=None, **kwargs):
        base = self.model(input_ids, past_key_values=past_key_values, use_cache=use_cache)
        h = base.last_hidden_state
        logits = self.decoder(self.drop(h))
        loss = _shifted_loss(logits, labels)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=base.past_key_values,
                                      hidden_states=(h,) if output_hidden_states else None)


class ARTransformerModel(_Base):
    config_class = ARTransformerConfig

    def __init__(self, config: ARTransformerConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.embed_size)
        self.drop = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(config.embed_size, config.nhead, config.ffn_size, config.dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None, use_cache=None, **kwargs):
        t = input_ids.shape[1]
        if t > self.config.seq_len:
            raise ValueError(f"input of {t} tokens exceeds this model's seq_len={self.config.seq_len}")
        x = self.embed(input_ids) * math.sqrt(self.config.embed_size) + _sinusoids(t, self.config.embed_size, input_ids.device)
        mask = torch.triu(torch.full((t, t), float("-inf"), device=input_ids.device), diagonal=1)
        h = self.encoder(self.drop(x), mask=mask, is_causal=True)
        return BaseModelOutputWithPast(last_hidden_state=h)


class ARTransformerForCausalLM(_Base):
    config_class = ARTransformerConfig

    def __init__(self, config: ARTransformerConfig):
        super().__init__(config)
        self.model = ARTransformerModel(config)
        self.decoder = nn.Linear(config.embed_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self):
        return self.decoder

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=None, **kwargs):
        h = self.model(input_ids).last_hidden_state
        logits = self.decoder(h)
        return CausalLMOutputWithPast(loss=_shifted_loss(logits, labels), logits=logits,
                                      hidden_states=(h,) if output_hidden_states else None)


def _sinusoids(t: int, d: int, device) -> torch.Tensor:
    """(t, d) sinusoidal positions. Computed per call: a non-persistent buffer would not survive meta-device
    loading in from_pretrained."""
    pos = torch.arange(t, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(t, d, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return pe


def _shifted_loss(logits, labels):
    if labels is None:
        return None
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                       labels[:, 1:].reshape(-1), ignore_index=-100)


def register() -> None:
    for cfg, base, lm in ((ARRNNConfig, ARRNNModel, ARRNNForCausalLM),
                          (ARTransformerConfig, ARTransformerModel, ARTransformerForCausalLM)):
        try:
            AutoConfig.register(cfg.model_type, cfg)
            AutoModel.register(cfg, base)
            AutoModelForCausalLM.register(cfg, lm)
        except ValueError:  # already registered
            pass


register()
