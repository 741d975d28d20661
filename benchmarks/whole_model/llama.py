"""Llama-3.2-1B shapes (or a local checkpoint), with its Mistral twin for transformers' sliding window."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.whole_model.family import LOSS_TOKENS, Family, init_std
from benchmarks.whole_model.rows import ConfigSpec


class Llama(Family):
    """Hidden 2048, 16 layers, 32 query / 8 key-value heads of 64, MLP 8192, vocab 128256 (tied); one model
    serves every length. Outputs are the base model's (without the LM head, whose N x vocab logits would
    dominate at long lengths); the loss takes the LM head on the last positions only."""

    name, title, length_flag = "llama", "Llama (Llama-3.2-1B shapes)", "--lengths"

    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, layers: int | None = None):
        super().__init__(args, device, dtype, layers)
        self.lengths = args.lengths or ([32, 64, 128] if self.tiny else [2048, 8192, 32768, 131072])
        self.window = args.window or (32 if self.tiny else 4096)
        self.check_length = args.check_tokens or (24 if self.tiny else 1024)
        self.window_check_length = 2 * self.window + self.window // 8
        self._twin: nn.Module | None = None
        if args.llama_path and layers is None:
            self.title = f"Llama ({args.llama_path})"

    def config(self):
        from transformers import AutoConfig, LlamaConfig

        if self.args.llama_path:
            config = AutoConfig.from_pretrained(self.args.llama_path)
        elif self.tiny:
            config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                 max_position_embeddings=4096, tie_word_embeddings=True, initializer_range=init_std(64))
        else:
            config = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                 num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                 max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True,
                                 initializer_range=init_std(2048))
        if self.layers is not None:
            config.num_hidden_layers = self.layers
        return config

    def model_key(self, length: int) -> int:
        return 0  # one model serves every length

    def new_model(self, length: int) -> nn.Module:
        from transformers import AutoModelForCausalLM

        if self.args.llama_path and self.layers is None:
            model = AutoModelForCausalLM.from_pretrained(self.args.llama_path, dtype=self.dtype,
                                                         attn_implementation="sdpa")
            return model.to(self.device)
        return AutoModelForCausalLM.from_config(self.config(), dtype=self.dtype, attn_implementation="sdpa")

    def release(self) -> None:
        self._twin = None  # shares the model's weights: nothing of its own to free
        super().release()

    def model_for(self, spec: ConfigSpec, model: nn.Module) -> nn.Module:
        return self.sliding_twin(model) if spec.name == "hf-sdpa-sliding" else model

    def sliding_twin(self, model: nn.Module) -> nn.Module:
        """The same weights (shared, not copied) as a MistralForCausalLM with ``sliding_window = window``."""
        if self._twin is None:
            from transformers import MistralConfig, MistralForCausalLM

            source = model.config
            fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                      "tie_word_embeddings")
            config = MistralConfig(**{field: getattr(source, field) for field in fields}, sliding_window=self.window)
            with torch.device("meta"):
                twin = MistralForCausalLM(config)
            twin.load_state_dict(model.state_dict(), assign=True)
            twin.model.rotary_emb = model.model.rotary_emb  # same rotary embedding (and its non-persistent buffers)
            left = [name for name, tensor in twin.state_dict(keep_vars=True).items() if tensor.is_meta]
            if left:
                raise RuntimeError(f"Mistral twin: tensors not shared from the Llama model: {left[:4]}")
            twin.set_attn_implementation("sdpa")
            self._twin = twin.eval()
        return self._twin

    def inputs(self, model: nn.Module, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
        return {"input_ids": ids.to(self.device)}

    def output(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.model(**inputs, use_cache=False).last_hidden_state

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = inputs["input_ids"]
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        tail = min(LOSS_TOKENS, ids.shape[1])
        logits = model.lm_head(hidden[:, -tail:-1]).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, -tail + 1:].reshape(-1))
