"""Denoise - Z-Image (`z_image_denoise` 1.7.0) with our override, through `invoke()`, on every sampling path.

Real parts: InvokeAI 6.14.2's node, sampling loop, regional-prompting patch, ControlNet extension and VAE
encode; diffusers' `ZImageTransformer2DModel` (tiny, real RoPE dimensions) and `AutoencoderKL`; InvokeAI's
`ZImageControlAdapter`. Mocked: only InvokeAI's service context.

DyPE off (preset off, or auto at ≤ 1.5 × base) must be bit-identical to InvokeAI's own class with no patch
at all; DyPE on must feed the σ of every call to our embedder, keep the index axis plain, take the
1024² schedule on the built-in Euler, and restore the transformer after success, error and cancel.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.transformers.transformer_z_image import RopeEmbedder, ZImageTransformer2DModel
from invokeai.app.invocations.baseinvocation import Classification, InvocationRegistry
from invokeai.app.invocations.fields import (
    DenoiseMaskField,
    LatentsField,
    TensorField,
    ZImageConditioningField,
)
from invokeai.app.invocations.load_custom_nodes import load_custom_nodes
from invokeai.app.invocations.model import ModelIdentifierField, TransformerField, VAEField
from invokeai.app.invocations.z_image_control import ZImageControlField
from invokeai.app.invocations.z_image_denoise import ZImageDenoiseInvocation as CoreZImageDenoise
from invokeai.app.services.session_processor.session_processor_common import CanceledException
from invokeai.backend.flux.schedulers import ZIMAGE_SCHEDULER_MAP
from invokeai.backend.model_manager.taxonomy import BaseModelType, ModelType
from invokeai.backend.stable_diffusion.diffusion.conditioning_data import ZImageConditioningInfo
from invokeai.backend.z_image import z_image_transformer_patch
from invokeai.backend.z_image.z_image_control_adapter import ZImageControlAdapter
from PIL import Image
from pydantic import ValidationError

import dype.invokeai
from dype import pack_settings as settings
from dype.cli import main as dype_main
from dype.cli.invokeai import PACK_NAME
from dype.config import DyPEConfig
from dype.embed import DyPEEmbedder, DyPERopeEmbedder
from dype.extension import DyPEExtension, active_patch
from dype.families import Z_IMAGE
from dype.invokeai import dispatch
from dype.invokeai import z_image_denoise as ours_module
from dype.invokeai.dispatch import DyPERun
from dype.invokeai.z_image_denoise import DYPE_SHIFT, active_state
from dype.invokeai.z_image_denoise import ZImageDenoiseInvocation as DyPEZImageDenoise
from dype.math import dype_frequencies

from .family_support import (
    FamilyServices,
    record_embedder_calls,
    run_node,
    text_embeddings,
    tiny_z_image_transformer,
)

SIZE = 128  # 8×8 image tokens (a forward costs about a quarter of a 16×16 one)
BASE = 64  # dype_base_resolution that turns DyPE on at SIZE: S = 2 (auto: on above 1.5 × 64 = 96 px)
STEPS = 2
SIGMA_TOLERANCE = 0.004  # t and t·1000 are bf16 (FAMILIES.md §3.2)
ON = {"dype_base_resolution": BASE}  # the default preset (auto), on at SIZE
# What auto resolves to at 128² with B = 64: λs = min(2·128/64, 8) = 4, λt = 2, isotropic for Z-Image.
ON_CONFIG = DyPEConfig(base_resolution=BASE, method="vision_yarn", dype_scale=4.0, dype_exponent=2.0, isotropic=True)
IMAGE_TOKENS = (SIZE // 16) ** 2
# InvokeAI's own shift at SIZE²: e^μ, μ linear from (256 tokens, 0.5) to (4096 tokens, 1.15), uncapped.
STOCK_SHIFT_AT_SIZE = math.exp(0.5 + (1.15 - 0.5) / (4096 - 256) * (IMAGE_TOKENS - 256))
SHIFT_1024 = math.exp(1.15)  # the stock shift at 1024² (4096 tokens): what DyPE runs at every size
ROWS_1024 = [1, 0.957, 0.905, 0.840, 0.760, 0.655, 0.513, 0.311]  # FAMILIES.md §3.3, 8 steps at 1024²
INDEX_SLOTS = Z_IMAGE.axes_dim[0] // 2  # complex slots of the plain index axis (16)
PATHS = ("euler", "heun", "lcm", "img2img", "inpaint", "cfg", "regional", "control")


def model_id(key: str, model_type: ModelType = ModelType.Main) -> ModelIdentifierField:
    return ModelIdentifierField(key=key, hash=f"blake3:{key}", name=key, base=BaseModelType.ZImage, type=model_type)


PATH_FIELDS: dict[str, dict[str, Any]] = {
    "euler": {},
    "heun": {"scheduler": "heun"},
    "lcm": {"scheduler": "lcm"},
    "img2img": {"latents": LatentsField(latents_name="init"), "denoising_start": 0.5},
    "inpaint": {"latents": LatentsField(latents_name="init"), "denoise_mask": DenoiseMaskField(mask_name="keep")},
    "cfg": {"guidance_scale": 2.0, "negative_conditioning": ZImageConditioningField(conditioning_name="neg")},
    "regional": {
        "positive_conditioning": [
            ZImageConditioningField(conditioning_name="top", mask=TensorField(tensor_name="top_half")),
            ZImageConditioningField(conditioning_name="bottom", mask=TensorField(tensor_name="bottom_half")),
        ]
    },
    "control": {
        "control": ZImageControlField(image_name="edges", control_model=model_id("control", ModelType.ControlNet)),
        "vae": VAEField(vae=model_id("vae", ModelType.VAE)),
    },
}


def make_node(cls: type, path: str = "euler", **overrides: Any) -> Any:
    """A Denoise - Z-Image node of class `cls` at SIZE², STEPS steps, on one sampling path."""
    fields: dict[str, Any] = dict(
        id="z_image_denoise_test",
        transformer=TransformerField(transformer=model_id("z"), loras=[]),
        positive_conditioning=ZImageConditioningField(conditioning_name="pos"),
        width=SIZE,
        height=SIZE,
        steps=STEPS,
        seed=0,
    )
    fields.update(PATH_FIELDS[path])
    fields.update(overrides)
    return cls(**fields)


# --- tiny models, built once per module --------------------------------------------------------------


@pytest.fixture(scope="module")
def transformer() -> ZImageTransformer2DModel:
    return tiny_z_image_transformer()


@pytest.fixture(scope="module")
def control_adapter() -> ZImageControlAdapter:
    torch.manual_seed(1)
    adapter = ZImageControlAdapter(
        num_control_blocks=1, control_in_dim=16, dim=128, n_refiner_layers=1, n_heads=1, n_kv_heads=1
    )
    for layer in adapter.control_layers:  # after_proj starts at zero (no hint at all): give it weights
        torch.nn.init.normal_(layer.after_proj.weight, std=0.5)
    return adapter.to(torch.bfloat16).eval()


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    """Factor 8, 16 latent channels, with the scaling and shift factors `vae_encode` reads."""
    torch.manual_seed(2)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ).eval()


def make_services(transformer: torch.nn.Module, control_adapter: Any = None, vae: Any = None) -> FamilyServices:
    svc = FamilyServices(
        base=BaseModelType.ZImage,
        models={"z": transformer, "control": control_adapter, "vae": vae},
        make_conditioning=lambda embeds: ZImageConditioningInfo(prompt_embeds=embeds),
    )
    for seed, name in enumerate(("pos", "neg", "top", "bottom"), start=1):
        svc.conditionings[name] = text_embeddings(seed)[0]  # [L, cap_feat_dim], as the node concatenates them
    latent = SIZE // 8
    svc.tensors["init"] = torch.randn(1, 16, latent, latent, generator=torch.Generator().manual_seed(7))
    keep = torch.zeros(1, 1, latent, latent)
    keep[..., : latent // 2, :] = 1.0
    svc.tensors["keep"] = keep
    top = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    top[:, : SIZE // 2] = True
    svc.tensors["top_half"], svc.tensors["bottom_half"] = top, ~top
    pixels = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    svc.images["edges"] = Image.fromarray(pixels, "RGB")
    return svc


@pytest.fixture
def services(transformer, control_adapter, vae) -> FamilyServices:
    return make_services(transformer, control_adapter, vae)


# --- what the model sees --------------------------------------------------------------------------------


@dataclass
class TimeCall:
    """One `t_embedder` call: σ = 1 − x / t_scale, and the transformer's state at that moment."""

    sigma: float
    embedder: weakref.ref  # transformer.rope_embedder then (weak: the test must not keep it alive)
    embedder_type: str
    transformer_pre_hooks: int
    t_embedder_pre_hooks: int  # besides this probe
    regional_forward: bool  # transformer.forward replaced by InvokeAI's regional patch


def regional_forward(transformer: torch.nn.Module) -> bool:
    """Whether InvokeAI's regional patch has replaced `transformer.forward` (by a lambda). Its restore
    assigns the bound method back as an instance attribute, so "forward" stays in vars() afterwards."""
    return getattr(transformer.forward, "__func__", None) is not type(transformer).forward


@dataclass
class Observed:
    times: list[TimeCall]
    transformer_calls: int = 0


@contextmanager
def observe(transformer: torch.nn.Module) -> Iterator[Observed]:
    """Record every `t_embedder` call (every forward, the ControlNet path included) and every transformer call."""
    observed = Observed([])

    def on_time(module: torch.nn.Module, args: tuple) -> None:
        x = args[0]
        observed.times.append(
            TimeCall(
                sigma=1.0 - float(x.detach().double().flatten()[0]) / transformer.t_scale,
                embedder=weakref.ref(transformer.rope_embedder),
                embedder_type=type(transformer.rope_embedder).__name__,
                transformer_pre_hooks=len(transformer._forward_pre_hooks),
                t_embedder_pre_hooks=len(module._forward_pre_hooks) - 1,
                regional_forward=regional_forward(transformer),
            )
        )

    def on_forward(module: torch.nn.Module, args: tuple, output: Any) -> None:
        observed.transformer_calls += 1

    handles = [
        transformer.t_embedder.register_forward_pre_hook(on_time),
        transformer.register_forward_hook(on_forward),
    ]
    try:
        yield observed
    finally:
        for handle in handles:
            handle.remove()


def assert_restored(transformer: torch.nn.Module, original: object) -> None:
    """Our patch is gone: the original plain embedder, no hooks, no registered patch, no node state."""
    assert transformer.rope_embedder is original and type(original) is RopeEmbedder
    assert "rope_embedder" not in transformer._modules
    assert len(transformer._forward_pre_hooks) == 0 and len(transformer.t_embedder._forward_pre_hooks) == 0
    assert not regional_forward(transformer)
    assert active_patch(transformer) is None
    assert ours_module._STATE.get() is None


def assert_released(times: list[TimeCall]) -> None:
    """Nothing holds the DyPE embedder any more (a leftover hook, registry entry or attribute would)."""
    if any(call.embedder() is not None for call in times):
        gc.collect()  # a reference cycle is no holder (slow on this heap: only when needed)
    assert [call.embedder() for call in times] == [None] * len(times)


def dype_embed_calls() -> Any:
    """Every call of the DyPE embedder (any instance): ids, output, σ."""
    return record_embedder_calls(DyPEEmbedder, "embed")


def dype_log_lines(ctx: Any) -> list[str]:
    lines = [str(call.args[0]) for call in ctx.logger.info.call_args_list if call.args]
    return [line for line in lines if line.startswith("DyPE")]


def euler_sigmas(shift: float, steps: int = STEPS) -> list[float]:
    """InvokeAI's own schedule rule (the core node's `_get_sigmas`), final 0 included."""
    return make_node(CoreZImageDenoise)._get_sigmas(shift, steps)


def scheduler_sigmas(name: str, steps: int = STEPS) -> list[float]:
    """σ of each model call of the core's diffusers scheduler path (shift 1, num_inference_steps)."""
    scheduler = ZIMAGE_SCHEDULER_MAP[name](num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(num_inference_steps=steps)
    return [float(t) / 1000 for t in scheduler.timesteps]


def expected_call_sigmas(path: str) -> list[float]:
    """The σ of every model call while DyPE is on at SIZE² (built-in Euler: shift e^1.15)."""
    if path in ("heun", "lcm"):
        return scheduler_sigmas(path)
    sigmas = euler_sigmas(SHIFT_1024)
    if path == "img2img":  # denoising_start 0.5: the core clips the schedule to its second half
        sigmas = sigmas[int(0.5 * (len(sigmas) - 1)) :]
    calls = sigmas[:-1]
    return [s for s in calls for _ in range(2)] if path == "cfg" else calls


# --- the node as InvokeAI sees it ---------------------------------------------------------------------


def test_node_is_the_core_node_plus_dype_fields():
    assert issubclass(DyPEZImageDenoise, CoreZImageDenoise)
    expected = ("Denoise - Z-Image", ["image", "z-image"], "latents", Classification.Prototype)
    for ui in (DyPEZImageDenoise.UIConfig, CoreZImageDenoise.UIConfig):
        assert (ui.title, ui.tags, ui.category, ui.classification) == expected
    assert (CoreZImageDenoise.UIConfig.version, DyPEZImageDenoise.UIConfig.version) == ("1.6.0", "1.7.0")
    assert DyPEZImageDenoise.get_type() == CoreZImageDenoise.get_type() == "z_image_denoise"
    for name, field in CoreZImageDenoise.model_fields.items():  # every core field, unchanged
        mine = DyPEZImageDenoise.model_fields[name]
        assert (mine.annotation, mine.default) == (field.annotation, field.default), name
    defaults = {name: DyPEZImageDenoise.model_fields[name].default for name in DyPEZImageDenoise.model_fields}
    assert {k: defaults[k] for k in ("dype_preset", "dype_scale", "dype_exponent", "dype_method")} == {
        "dype_preset": "auto",  # the Linear UI sends no DyPE field: the default is what its users get
        "dype_scale": None,
        "dype_exponent": None,
        "dype_method": "vision_yarn",
    }
    assert (defaults["dype_base_resolution"], defaults["dype_isotropic"], defaults["dype_shift"]) == (
        1024,
        True,
        "official",
    )


def minimal_node(**fields: Any) -> dict[str, Any]:
    base = {
        "type": "z_image_denoise",
        "id": "n1",
        "transformer": {
            "transformer": {"key": "k", "hash": "h", "name": "z", "base": "z-image", "type": "main"},
            "loras": [],
        },
        "positive_conditioning": {"conditioning_name": "pos"},
    }
    return {**base, **fields}


@pytest.mark.parametrize(
    "bad",
    [
        {"dype_preset": "on"},
        {"dype_scale": 9},
        {"dype_exponent": -1},
        {"dype_method": "longrope"},
        {"dype_base_resolution": 1000},
        {"dype_base_resolution": 0},
        {"dype_isotropic": "maybe"},
        {"dype_shift": "capped"},
    ],
    ids=lambda bad: "-".join(f"{k}={v}" for k, v in bad.items()),
)
def test_a_bad_field_value_is_a_validation_error_naming_it(bad):
    (name,) = bad
    adapter = InvocationRegistry.get_invocation_typeadapter()
    with pytest.raises(ValidationError) as error:
        adapter.validate_python(minimal_node(**bad))
    assert [e["loc"][-1] for e in error.value.errors()] == [name]
    assert name in str(error.value)


def test_type_adapter_builds_ours_with_the_defaults():
    adapter = InvocationRegistry.get_invocation_typeadapter()
    parsed = adapter.validate_python(minimal_node())
    assert type(parsed) is DyPEZImageDenoise
    assert (parsed.dype_preset, parsed.dype_isotropic, parsed.dype_shift) == ("auto", True, "official")
    parsed = adapter.validate_python(minimal_node(dype_preset="4k", dype_method="ntk", dype_isotropic=False))
    assert (parsed.dype_preset, parsed.dype_method, parsed.dype_isotropic) == ("4k", "ntk", False)


def test_default_preset_setting_validates_and_needs_a_restart(caplog):
    with pytest.raises(ValueError, match="default_preset") as error:
        settings.set_default_preset("on")
    assert "auto" in str(error.value) and "off" in str(error.value)
    # The node classes exist already: a new default only takes effect after a restart, and says so.
    with caplog.at_level(logging.WARNING, logger=settings.__name__):
        settings.set_default_preset("off")
    assert "restart" in caplog.text
    assert DyPEZImageDenoise.model_fields["dype_preset"].default == "auto"


@pytest.fixture
def invokeai_root(tmp_path, monkeypatch):
    (tmp_path / "invokeai.yaml").write_text("# Internal metadata - do not edit:\nschema_version: 4.0.2\n")
    monkeypatch.setenv("INVOKEAI_ROOT", str(tmp_path))
    return tmp_path


def test_pack_installed_twice_is_one_override(invokeai_root):
    module = sys.modules[CoreZImageDenoise.__module__]
    core_patch = z_image_transformer_patch.patch_transformer_for_regional_prompting
    assert dype_main(["invokeai", "install", "--root", str(invokeai_root)]) == 0
    InvocationRegistry.register_invocation(CoreZImageDenoise)  # a fresh server: the core node is registered
    try:
        for _ in range(2):  # startup, then "reload custom nodes" re-executes the pack's __init__.py
            load_custom_nodes(invokeai_root / "nodes", logging.getLogger("test"))
            assert InvocationRegistry.get_invocation_for_type("z_image_denoise") is DyPEZImageDenoise
        dype.invokeai.register()
        dype.invokeai.register()
    finally:
        sys.modules.pop(PACK_NAME, None)
        dype.invokeai.register()
    wrapper = module.patch_transformer_for_regional_prompting
    assert getattr(wrapper, dispatch.DISPATCH_MARK, False)
    assert wrapper.__wrapped__ is core_patch  # wrapped exactly once
    classes = [c for c in InvocationRegistry._invocation_classes if c.get_type() == "z_image_denoise"]
    assert classes == [DyPEZImageDenoise]


# --- DyPE off: InvokeAI's node, bit for bit, with no patch at all ----------------------------------------


# InvokeAI 6.14.2's regional forward (z_image_transformer_patch.py:158-160) builds its mask from
# `unified_mask.bool()`, but diffusers 0.40.0's `_build_unified_sequence` returns no mask (None) when every
# batch item has the same length, which a batch of one always has: every masked-regional run raises
# there, InvokeAI's own node included. Both nodes must fail alike; DyPE must run up to that point.
REGIONAL_UPSTREAM_ERROR = "'NoneType' object has no attribute 'bool'"


def invoke_path(invocation: Any, path: str, svc: FamilyServices) -> tuple[torch.Tensor | str, Any]:
    """(the latents, the context); for the regional path (the error text, the context)."""
    ctx = svc.context()
    if path != "regional":
        return run_node(invocation, svc, ctx)[0], ctx
    with pytest.raises(AttributeError, match=REGIONAL_UPSTREAM_ERROR) as error:
        run_node(invocation, svc, ctx)
    return str(error.value), ctx


def same_result(a: torch.Tensor | str, b: torch.Tensor | str) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else a == b


@pytest.mark.parametrize("path", PATHS)
def test_dype_off_is_bit_identical_to_invokeai(path, services, transformer):
    original = transformer.rope_embedder
    expected, _ = invoke_path(make_node(CoreZImageDenoise, path), path, services)
    tables = original.freqs_cis  # built by the first call; DyPE off must neither rebuild nor touch them
    snapshot = [table.clone() for table in tables]
    # "off", and the default preset (auto) at ≤ 1.5 × base (128 px ≤ 1536 px)
    for overrides in ({"dype_preset": "off"}, {}):
        invocation = make_node(DyPEZImageDenoise, path, **overrides)
        assert invocation.resolve_dype_config() is None
        with observe(transformer) as seen:
            latents, ctx = invoke_path(invocation, path, services)
        assert same_result(latents, expected), overrides
        assert seen.times and all(call.embedder() is original for call in seen.times)
        assert {(c.transformer_pre_hooks, c.t_embedder_pre_hooks) for c in seen.times} == {(0, 0)}
        assert dype_log_lines(ctx) == []
        assert original.freqs_cis is tables
        assert all(torch.equal(a, b) for a, b in zip(tables, snapshot, strict=True))
        assert_restored(transformer, original)


# --- DyPE on: every path, σ of every call, the contract's angles and moduli ---------------------------


def assert_embedding_contract(
    ids: torch.Tensor,
    output: torch.Tensor,
    sigma: float,
    config: DyPEConfig = ON_CONFIG,
    width: int = SIZE,
    height: int = SIZE,
) -> None:
    """FAMILIES.md §1.2, §3.1: index axis plain (stock, bit for bit); each spatial axis
    polar(m, float32(position · ω)) with this call's σ and the node's size; caption tokens sit at spatial
    position 0 (angle 0, modulus m)."""
    stock = RopeEmbedder(theta=256.0, axes_dims=[32, 48, 48], axes_lens=[1024, 512, 512])(ids)
    assert output.dtype == torch.complex64 and output.shape == stock.shape
    assert torch.equal(output[:, :INDEX_SLOTS], stock[:, :INDEX_SLOTS])
    frequencies = dype_frequencies(config, Z_IMAGE, width=width, height=height, sigma=sigma)
    start = INDEX_SLOTS
    for axis in Z_IMAGE.spatial_axes:
        slots = Z_IMAGE.axes_dim[axis] // 2
        block = output[:, start : start + slots]
        omega, amplitude = frequencies[axis]
        angle = (ids[:, axis].double()[:, None] * omega.double()[None, :]).float()
        assert torch.equal(block, torch.polar(torch.full_like(angle, amplitude), angle))
        assert torch.allclose(block.abs(), torch.full_like(angle, amplitude))
        start += slots


@pytest.mark.parametrize("path", PATHS)
def test_dype_runs_on_every_path(path, services, transformer):
    original = transformer.rope_embedder
    invocation = make_node(DyPEZImageDenoise, path, **ON)
    assert invocation.resolve_dype_config() == ON_CONFIG
    with observe(transformer) as seen, dype_embed_calls() as calls:
        _, ctx = invoke_path(invocation, path, services)

    # σ of every call = the schedule's σ (built-in Euler: the 1024² shift e^1.15), within bf16 rounding
    expected = expected_call_sigmas(path)
    if path == "regional":  # the upstream error comes in the first forward, after both embedder calls
        expected = expected[:1]
    assert [c.sigma for c in seen.times] == pytest.approx(expected, abs=SIGMA_TOLERANCE)
    # every call ran with our embedder and its σ hook; each forward embeds image ids, then caption ids
    assert all(c.embedder_type == "DyPERopeEmbedder" for c in seen.times)
    assert {(c.transformer_pre_hooks, c.t_embedder_pre_hooks) for c in seen.times} == {(1, 1)}  # guard, σ
    assert len(calls) == 2 * len(seen.times)
    for index, call in enumerate(calls):
        assert call.sigma == pytest.approx(seen.times[index // 2].sigma, abs=1e-12)
        is_caption = index % 2 == 1
        assert bool((call.ids[:, 1:] == 0).all()) is is_caption
        assert_embedding_contract(call.ids, call.output, call.sigma)
    first_image = calls[0]
    assert not torch.equal(first_image.output, RopeEmbedder(256.0, [32, 48, 48], [1024, 512, 512])(first_image.ids))

    if path in ("control", "regional"):  # ControlNet bypasses transformer(...); regional fails inside it
        assert seen.transformer_calls == 0
    else:
        assert seen.transformer_calls == len(seen.times)
    assert all(c.regional_forward for c in seen.times) is (path == "regional")

    (line,) = dype_log_lines(ctx)
    assert line.startswith(f"DyPE enabled: {SIZE}×{SIZE}, vision_yarn, λs=4.00, λt=2.00")
    assert (f"{path} uses its own linear schedule" if path in ("heun", "lcm") else "shift=3.158") in line
    assert_restored(transformer, original)
    assert_released(seen.times)


def test_dype_schedule_is_the_1024_one_end_to_end(services, transformer):
    """At 128² InvokeAI's own shift is e^0.47; with DyPE on the model gets the e^1.15 schedule instead."""
    pinned, stock = euler_sigmas(SHIFT_1024, 3)[:-1], euler_sigmas(STOCK_SHIFT_AT_SIZE, 3)[:-1]
    assert max(abs(a - b) for a, b in zip(pinned, stock, strict=True)) > 0.1
    for overrides, schedule, text in (
        ({}, pinned, "shift=3.158 (1024² schedule)"),
        ({"shift": 2.0}, euler_sigmas(2.0, 3)[:-1], "shift=2 (the node's Shift field)"),  # a user's shift wins
        ({"dype_shift": "stock"}, stock, f"shift={STOCK_SHIFT_AT_SIZE:.3f} (stock)"),
    ):
        with observe(transformer) as seen, dype_embed_calls() as calls:
            _, ctx = run_node(make_node(DyPEZImageDenoise, steps=3, **ON, **overrides), services)
        assert [c.sigma for c in seen.times] == pytest.approx(schedule, abs=SIGMA_TOLERANCE), overrides
        assert len(calls) == 6  # DyPE is on in all three
        (line,) = dype_log_lines(ctx)
        assert line.endswith(text)


def test_4096_schedule_is_the_1024_one_unless_shift_is_set():
    """The rule where it lives (no 4096² denoise on CPU): the shift the node's `_run_diffusion` would use."""
    assert math.isclose(DYPE_SHIFT, SHIFT_1024)
    seq_len = (4096 // Z_IMAGE.pixels_per_token) ** 2
    invocation = make_node(DyPEZImageDenoise, width=4096, height=4096, steps=8)
    config = invocation.resolve_dype_config()
    assert config is not None  # auto is on at 4096²
    stock = invocation._get_sigmas(invocation._calculate_shift(seq_len), 8)  # no state: InvokeAI's rule
    assert all(s > 0.99 for s in stock[:-1])  # every step at pure noise (FAMILIES.md §3.3)
    with active_state(DyPERun(config, 4096, 4096)):
        sigmas = invocation._get_sigmas(invocation._calculate_shift(seq_len), 8)
    assert sigmas[:-1] == pytest.approx(ROWS_1024, abs=5e-4) and sigmas[-1] == 0.0
    # With Shift set, the core uses that field and never calls `_calculate_shift` (z_image_denoise.py:332-337);
    # the override does not pin either (end to end: test_dype_schedule_is_the_1024_one_end_to_end).
    user = make_node(DyPEZImageDenoise, width=4096, height=4096, steps=8, shift=2.0)
    with active_state(DyPERun(user.resolve_dype_config(), 4096, 4096)):
        assert not user.pins_shift()
        assert user._calculate_shift(seq_len) == pytest.approx(make_node(CoreZImageDenoise)._calculate_shift(seq_len))
    # Heun and LCM keep their own linear schedules (`shift` only shapes the img2img preblend there).
    for scheduler in ("heun", "lcm"):
        other = make_node(DyPEZImageDenoise, width=4096, height=4096, scheduler=scheduler)
        with active_state(DyPERun(other.resolve_dype_config(), 4096, 4096)):
            assert not other.pins_shift()


def test_isotropic_field_reaches_the_embedder(services, transformer):
    """128 wide, 64 high, B = 64: s_rows 1, s_columns 2. Isotropic (default) rotates both axes alike."""
    for isotropic in (True, False):
        invocation = make_node(DyPEZImageDenoise, height=SIZE // 2, steps=1, dype_isotropic=isotropic, **ON)
        with dype_embed_calls() as calls:
            run_node(invocation, services)
        image = calls[0]
        config = DyPEConfig(base_resolution=BASE, dype_scale=4.0, isotropic=isotropic)
        assert_embedding_contract(image.ids, image.output, image.sigma, config, width=SIZE, height=SIZE // 2)
        diagonal = image.ids[:, 1] == image.ids[:, 2]
        diagonal &= image.ids[:, 1] > 0
        rows = image.output[diagonal, INDEX_SLOTS : INDEX_SLOTS + 24]
        columns = image.output[diagonal, INDEX_SLOTS + 24 :]
        assert torch.equal(rows, columns) is isotropic


def test_log_line_for_heun_with_shift_says_the_shift_is_not_used():
    """Heun/LCM ignore Shift (the core builds them with shift 1): the log must not claim a shift."""
    invocation = make_node(DyPEZImageDenoise, scheduler="heun", shift=2.0, **ON)
    logger = logging.getLogger("test")
    with active_state(DyPERun(ON_CONFIG, SIZE, SIZE)), pytest.MonkeyPatch.context() as mp:
        lines: list[str] = []
        mp.setattr(logger, "info", lines.append)
        invocation._log_enabled(logger, ON_CONFIG)
    (line,) = lines
    assert "heun uses its own linear schedule" in line and "shift=2" not in line


# --- restore, isolation, refusal --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["error", "cancel", "transformer"])
def test_restored_after_error_and_cancel(where, services, transformer):
    """InvokeAI cancels by raising CanceledException from the step callback; an error may come from anywhere."""
    original = transformer.rope_embedder
    ctx = services.context()
    failure: BaseException = CanceledException() if where == "cancel" else RuntimeError("boom")
    hook = None
    if where == "transformer":

        def fail(module: torch.nn.Module, args: tuple) -> None:
            if type(transformer.rope_embedder) is DyPERopeEmbedder:
                raise failure

        hook = transformer.noise_refiner[0].register_forward_pre_hook(fail)  # inside the forward
    else:
        ctx.util.sd_step_callback.side_effect = failure
    try:
        with observe(transformer) as seen, pytest.raises(type(failure)):
            run_node(make_node(DyPEZImageDenoise, **ON), services, ctx)
    finally:
        if hook is not None:
            hook.remove()
    assert len(seen.times) == 1 and seen.times[0].embedder_type == "DyPERopeEmbedder"
    assert_restored(transformer, original)
    failure = ctx = None  # the exception's traceback must not be what keeps the embedder alive
    assert_released(seen.times)


def test_two_threads_are_isolated(transformer):
    """DyPE on in one thread, InvokeAI's own node in the other, each with its own model (one cache per GPU)."""
    models = {"dype": copy.deepcopy(transformer), "core": copy.deepcopy(transformer)}
    jobs = {"dype": make_node(DyPEZImageDenoise, **ON), "core": make_node(CoreZImageDenoise)}
    alone = {name: run_node(jobs[name], make_services(models[name]))[0] for name in jobs}

    both_inside = threading.Barrier(2, timeout=60)  # both states live at once: meet in the first t_embedder call
    met: set[str] = set()

    def meet_hook(name: str):
        def meet(module: torch.nn.Module, args: tuple) -> None:
            if name not in met:
                met.add(name)
                both_inside.wait()

        return meet

    hooks = [models[name].t_embedder.register_forward_pre_hook(meet_hook(name)) for name in models]
    results: dict[str, Any] = {}

    def work(name: str) -> None:
        try:
            with observe(models[name]) as seen:
                latents, _ = run_node(jobs[name], make_services(models[name]))
            results[name] = (latents, seen)
        except BaseException as error:  # surfaced below
            results[name] = error

    threads = [threading.Thread(target=work, args=(name,)) for name in jobs]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for hook in hooks:
            hook.remove()
    for outcome in results.values():
        if isinstance(outcome, BaseException):
            raise outcome
    assert met == {"dype", "core"}
    for name, model in models.items():
        latents, seen = results[name]
        assert torch.equal(latents, alone[name]), name
        embedders = {call.embedder_type for call in seen.times}
        assert embedders == ({"DyPERopeEmbedder"} if name == "dype" else {"RopeEmbedder"}), name
        assert type(model.rope_embedder) is RopeEmbedder and len(model.t_embedder._forward_pre_hooks) == 0


def test_omni_mode_is_refused_while_dype_is_on():
    """Omni (nested x, two time embeddings per forward) cannot be served with one σ; off, it runs as usual."""
    torch.manual_seed(0)
    omni_model = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=128, n_layers=1, n_refiner_layers=1,
        n_heads=1, n_kv_heads=1, cap_feat_dim=32, rope_theta=256.0, t_scale=1000.0,
        axes_dims=[32, 48, 48], axes_lens=[1024, 512, 512], siglip_feat_dim=8,
    ).to(torch.bfloat16).eval()  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    omni = dict(
        x=[[torch.randn(16, 1, 16, 16, generator=generator).to(torch.bfloat16)]],
        t=torch.tensor([0.25], dtype=torch.bfloat16),
        cap_feats=[[text_embeddings(1)[0].to(torch.bfloat16)]],
        siglip_feats=[[None]],
        image_noise_mask=[[1]],
    )
    original = omni_model.rope_embedder
    with torch.no_grad():
        with observe(omni_model) as seen:
            omni_model(**omni)  # DyPE off: nothing refuses it
        assert [round(c.sigma, 2) for c in seen.times] == [0.75, 0.0]  # t, then the clean time 1.0
        with (
            DyPEExtension(ON_CONFIG, width=SIZE, height=SIZE).patched(omni_model),
            pytest.raises(ValueError, match="omni"),
        ):
            omni_model(**omni)
        assert omni_model.rope_embedder is original and len(omni_model._forward_pre_hooks) == 0
        omni_model(**omni)  # off again after the patch
