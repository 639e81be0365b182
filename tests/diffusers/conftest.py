"""A tiny FLUX pipeline built offline: real diffusers/transformers classes, random weights.

Everything is built from configs in-process (no hub): a 1+1-block FluxTransformer2DModel with
head dim 16 (rope axes 4+6+6), a 4-level AutoencoderKL with 4 channels (so the VAE factor is 8 and
one token is 16×16 px, and tiles are 1024 px, as in real FLUX), 2-layer CLIP and T5 encoders, and tokenizers built from
vocabularies written here. Session-scoped: built once, saved once (dev and schnell variants).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in LETTERS:
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer() -> Any:
    from transformers import T5TokenizerFast

    # Unigram vocab in T5's layout: <pad>=0, </s>=1, <unk>=2, then pieces with log-probabilities.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(letter, -3.0) for letter in LETTERS] + [("▁" + letter, -3.5) for letter in LETTERS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def build_tiny_flux_components(guidance_embeds: bool = True, seed: int = 0) -> dict[str, Any]:
    """The seven FluxPipeline components, tiny, with seeded random weights."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer), projection_dim=32,
                max_position_embeddings=77, hidden_act="gelu",
            )
        )  # fmt: skip
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
            )
        )  # fmt: skip
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
            guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
        )  # fmt: skip
        vae = AutoencoderKL(
            sample_size=1024, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
            latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=0.0609, scaling_factor=1.5035,
        )  # fmt: skip
    # Built from configs, modules start in training mode (T5 dropout would make runs differ).
    for model in (text_encoder, text_encoder_2, transformer, vae):
        model.eval().requires_grad_(False)
    # dev: resolution-dependent shift (μ from base/max_shift); schnell: none, as in the real configs.
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=guidance_embeds,
    )  # fmt: skip
    return {
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
    }


def tiny_controlnet(transformer: Any, seed: int = 1) -> Any:
    """A 1+1-block FluxControlNetModel sharing the transformer's geometry, with non-zero weights."""
    from diffusers import FluxControlNetModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        controlnet = FluxControlNetModel.from_transformer(
            transformer, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2
        )
        # from_transformer zero-inits the conditioning input; random weights make its effect visible.
        for parameter in controlnet.parameters():
            torch.nn.init.normal_(parameter, std=0.02)
    return controlnet.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def make_components() -> Any:
    """`build_tiny_flux_components` as a fixture, for tests that need their own fresh models."""
    return build_tiny_flux_components


@pytest.fixture(scope="session")
def make_controlnet() -> Any:
    """`tiny_controlnet` as a fixture (test modules do not import conftest)."""
    return tiny_controlnet


@pytest.fixture(scope="session")
def tiny_components() -> dict[str, Any]:
    return build_tiny_flux_components()


@pytest.fixture(scope="session")
def flux_pipe(tiny_components: dict[str, Any]) -> Any:
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _save(components: dict[str, Any], folder: Path) -> Path:
    from diffusers import FluxPipeline

    FluxPipeline(**components).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory: pytest.TempPathFactory, tiny_components: dict[str, Any]) -> Path:
    """The tiny FLUX dev pipeline saved in diffusers format."""
    return _save(tiny_components, tmp_path_factory.mktemp("tiny-flux-dev"))


@pytest.fixture(scope="session")
def tiny_schnell_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny FLUX schnell pipeline (no guidance embedding, no dynamic shift) saved in diffusers format."""
    folder = _save(build_tiny_flux_components(guidance_embeds=False), tmp_path_factory.mktemp("tiny-flux-schnell"))
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    return folder
