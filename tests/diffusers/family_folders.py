"""Tiny diffusers-format checkpoints of FLUX.2 Klein, Chroma and Z-Image, built offline (random weights).

Real classes with the families' real RoPE (one head of 128; FLUX.2 θ 2000 axes 32×4, Z-Image θ 256 axes
32/48/48, Chroma as FLUX.1), real text encoders (a 28-layer Qwen3 of width 32 for Klein and Z-Image, the
2-layer T5 of the FLUX fixtures for Chroma) with tokenizers built from vocabularies written here, and
4-level VAEs (factor 8). Saved with `save_pretrained`, so `dype generate --model DIR` loads them as users'
checkpoints are loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

QWEN_WIDTH = 32
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer() -> Any:
    """A byte-level BPE tokenizer with Qwen's special tokens and a chat template (no merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def qwen_encoder(vocab_size: int) -> Any:
    """28 layers, so Klein's text_encoder_out_layers (9, 18, 27) exist; width 32."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=QWEN_WIDTH, intermediate_size=37, num_hidden_layers=28,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
    )  # fmt: skip
    return Qwen3ForCausalLM(config).eval()


def flux_like_vae(latent_channels: int) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8] * 4, layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4,
        shift_factor=0.1159, scaling_factor=0.3611,
    ).eval()  # fmt: skip


def dynamic_scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096, time_shift_type="exponential",
    )  # fmt: skip


def build_klein(folder: Path) -> Path:
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        tokenizer = qwen_tokenizer()
        transformer = Flux2Transformer2DModel(
            patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=128,
            num_attention_heads=1, joint_attention_dim=3 * QWEN_WIDTH, timestep_guidance_channels=32,
            mlp_ratio=1.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False,
        ).eval()  # fmt: skip
        vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4).eval()
        pipe = Flux2KleinPipeline(
            dynamic_scheduler(), vae, qwen_encoder(len(tokenizer)), tokenizer, transformer, is_distilled=True
        )
    pipe.save_pretrained(folder)
    return folder


def build_z_image(folder: Path) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        tokenizer = qwen_tokenizer()
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=128, n_layers=1, n_refiner_layers=1,
            n_heads=1, n_kv_heads=1, cap_feat_dim=QWEN_WIDTH, rope_theta=256.0, t_scale=1000.0,
            axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
        ).eval()  # fmt: skip
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)  # as Turbo ships
        pipe = ZImagePipeline(scheduler, flux_like_vae(16), qwen_encoder(len(tokenizer)), tokenizer, transformer)
    pipe.save_pretrained(folder)
    return folder


def build_chroma(folder: Path, t5: Any, t5_tokenizer: Any) -> Path:
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformer = ChromaTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
            num_attention_heads=1, joint_attention_dim=32, axes_dims_rope=(16, 56, 56), approximator_num_channels=8,
            approximator_hidden_dim=32, approximator_layers=1,
        ).eval()  # fmt: skip
        pipe = ChromaPipeline(dynamic_scheduler(), flux_like_vae(16), t5, t5_tokenizer, transformer)
    pipe.save_pretrained(folder)
    return folder
