"""What the perf/ scripts share: model presets with random weights, a stand-in tokenizer, device timing."""

from __future__ import annotations

import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tarpo.config import TrainConfig
from tarpo.methods import build_mode
from tarpo.modes import Mode

PRESETS = {
    # for checking a script's logic on a CPU in seconds
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    # ~3M parameters: the size of the embedded backbone's bigger variants
    "3m": dict(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2),
    # Qwen2.5-1.5B's shape (random weights)
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2),
}
METHODS = ("grpo", "hrpo", "lepo", "tarpo", "atp_latent")


class CharTokenizer:
    """Just enough of a tokenizer for AnswerMarker: id -> text ('#' is id 35)."""

    def __init__(self, vocab_size: int) -> None:
        self.n = vocab_size

    def __len__(self) -> int:
        return self.n

    def decode(self, ids: list[int]) -> str:
        return "".join("#" if i == 35 else chr(0x4E00 + i) for i in ids)


def random_model(preset: str, device: torch.device, dtype: torch.dtype) -> Qwen2ForCausalLM:
    """A Qwen2 of the preset's shape with random weights (seed 0)."""
    torch.manual_seed(0)
    config = Qwen2Config(**PRESETS[preset], max_position_embeddings=8192, tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).to(device=device, dtype=dtype)


def preset_mode(method: str, model: Qwen2ForCausalLM, device: torch.device, dtype: torch.dtype) -> Mode:
    """The method's mode on a random model: TARPO at ~50% soft steps (its most expensive regime), ATP-Latent with
    a latent block of up to 6 steps whose special tokens are the vocabulary's last ids."""
    config = model.config
    cfg = TrainConfig(action_bias_hard=0.0)
    if method == "atp_latent":
        cfg = TrainConfig()
        cfg.atp_latents_per_step, cfg.atp_max_steps = 2, 3
    mode = build_mode(method, cfg, config.hidden_size).to(device=device, dtype=dtype)
    if method == "atp_latent":
        mode.special_ids = {"<bol>": config.vocab_size - 3, "<eol>": config.vocab_size - 2,
                            "<lat>": config.vocab_size - 1}
    return mode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn, device: torch.device) -> float:
    """Wall seconds of fn(), the device's queued work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0
