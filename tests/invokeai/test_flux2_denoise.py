"""FLUX2 Denoise with our override, through `invoke()`, on every sampling path InvokeAI 6.14.2 has.

DyPE off (and `auto` up to 1.5 × base) must be bit-identical to InvokeAI's own node; DyPE on must run
every path with our embedder in `pos_embed`, fed the σ of each call, leave the T and L axes plain, give
reference tokens the image's spatial frequencies, and put the original object back afterwards.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
import torch
from invokeai.app.invocations.baseinvocation import InvocationRegistry
from invokeai.app.invocations.fields import (
    DenoiseMaskField,
    FluxConditioningField,
    FluxKontextConditioningField,
    ImageField,
    LatentsField,
    TensorField,
)
from invokeai.app.invocations.flux2_denoise import Flux2DenoiseInvocation as CoreFlux2Denoise
from invokeai.app.invocations.model import ModelIdentifierField, TransformerField, VAEField
from invokeai.backend.model_manager.taxonomy import BaseModelType, ModelType
from invokeai.backend.stable_diffusion.diffusion.conditioning_data import FLUXConditioningInfo
from PIL import Image
from pydantic import ValidationError

import dype.invokeai
from dype.embed import DyPEEmbedder
from dype.invokeai import flux2_denoise
from dype.invokeai.flux2_denoise import Flux2DenoiseInvocation as DyPEFlux2Denoise
from dype.math import base_frequencies

from .family_support import (
    FamilyServices,
    record_embedder_calls,
    run_node,
    text_embeddings,
    tiny_flux2_transformer,
    tiny_flux2_vae,
)

SIZE = 256  # 16×16 tokens
ON = {"dype_preset": "4k", "dype_base_resolution": 128}  # S = 2 at 256²
STEPS = 2


@pytest.fixture(scope="module")
def transformer() -> torch.nn.Module:
    return tiny_flux2_transformer()


@pytest.fixture(scope="module")
def vae() -> torch.nn.Module:
    return tiny_flux2_vae()


@pytest.fixture
def services(transformer: torch.nn.Module, vae: torch.nn.Module) -> FamilyServices:
    svc = FamilyServices(
        base=BaseModelType.Flux2,
        models={"flux2": transformer, "vae": vae},
        make_conditioning=lambda t5: FLUXConditioningInfo(clip_embeds=torch.zeros(1, 8), t5_embeds=t5),
    )
    svc.conditionings["pos"] = text_embeddings(1)
    svc.conditionings["neg"] = text_embeddings(2, tokens=5)
    return svc


def model_id(key: str, model_type: ModelType = ModelType.Main) -> ModelIdentifierField:
    return ModelIdentifierField(key=key, hash=f"blake3:{key}", name=key, base=BaseModelType.Flux2, type=model_type)


def node(cls: type, **overrides: Any) -> Any:
    fields: dict[str, Any] = dict(
        id="flux2_denoise_test",
        transformer=TransformerField(transformer=model_id("flux2"), loras=[]),
        vae=VAEField(vae=model_id("vae", ModelType.VAE)),
        positive_text_conditioning=FluxConditioningField(conditioning_name="pos"),
        width=SIZE,
        height=SIZE,
        num_steps=STEPS,
        seed=0,
    )
    return cls(**(fields | overrides))


def path_fields(path: str, svc: FamilyServices) -> dict[str, Any]:
    """Node fields that select one sampling path (and what it needs in the fake stores)."""
    latent = SIZE // 8
    if path in ("euler", "heun", "lcm"):
        return {"scheduler": path}
    if path == "img2img":
        svc.tensors["init"] = torch.randn(1, 32, latent, latent, generator=torch.Generator().manual_seed(7))
        return {"latents": LatentsField(latents_name="init"), "denoising_start": 0.4}
    if path == "inpaint":
        svc.tensors["init"] = torch.randn(1, 32, latent, latent, generator=torch.Generator().manual_seed(7))
        mask = torch.zeros(1, 1, latent, latent)
        mask[..., : latent // 2, :] = 1
        svc.tensors["mask"] = mask
        return {"latents": LatentsField(latents_name="init"), "denoise_mask": DenoiseMaskField(mask_name="mask")}
    if path == "cfg":
        return {"negative_text_conditioning": FluxConditioningField(conditioning_name="neg"), "cfg_scale": 2.5}
    if path == "regional":
        region = torch.zeros(1, latent, latent, dtype=torch.bool)
        region[:, : latent // 2] = True
        svc.tensors["region"], svc.tensors["region_inv"] = region, ~region
        return {
            "positive_text_conditioning": [
                FluxConditioningField(conditioning_name="pos", mask=TensorField(tensor_name="region")),
                FluxConditioningField(conditioning_name="neg", mask=TensorField(tensor_name="region_inv")),
            ]
        }
    if path == "reference":
        svc.images["ref"] = Image.new("RGB", (96, 64), (200, 40, 90))
        return {"kontext_conditioning": FluxKontextConditioningField(image=ImageField(image_name="ref"))}
    raise AssertionError(path)


PATHS = ["euler", "heun", "lcm", "img2img", "inpaint", "cfg", "regional", "reference"]


def assert_unpatched(model: torch.nn.Module, original: Any) -> None:
    assert model.pos_embed is original and type(original).__name__ == "Flux2PosEmbed"
    assert not model._forward_pre_hooks and not model._forward_hooks


@pytest.mark.parametrize("path", PATHS)
def test_off_and_auto_below_threshold_are_bit_identical_to_invokeai(path, services, transformer):
    original = transformer.pos_embed
    fields = path_fields(path, services)
    expected, _ = run_node(node(CoreFlux2Denoise, **fields), services)
    for dype_fields in ({"dype_preset": "off"}, {}, {"dype_preset": "auto", "dype_base_resolution": 176}):
        # the default is auto: at 256² with B 2048 (or 176: 1.5·B = 264 ≥ 256) it is off
        got, ctx = run_node(node(DyPEFlux2Denoise, **fields, **dype_fields), services)
        assert torch.equal(got, expected), dype_fields
        assert not any("DyPE" in str(call) for call in ctx.logger.info.call_args_list)
        assert_unpatched(transformer, original)


@pytest.mark.parametrize("path", PATHS)
def test_dype_on_every_path(path, services, transformer):
    original = transformer.pos_embed
    fields = path_fields(path, services)
    off, _ = run_node(node(DyPEFlux2Denoise, **fields, dype_preset="off"), services)

    seen: list[tuple[float, str]] = []

    def model_call(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((float(kwargs["timestep"].flatten()[0].float()), type(module.pos_embed).__name__))

    handle = transformer.register_forward_pre_hook(model_call, with_kwargs=True)
    try:
        with record_embedder_calls(DyPEEmbedder, "embed") as calls:
            on, ctx = run_node(node(DyPEFlux2Denoise, **fields, **ON), services)
    finally:
        handle.remove()

    assert torch.isfinite(on).all() and not torch.equal(on, off)
    assert {embedder for _, embedder in seen} == {"DyPEPosEmbed"}
    # Two embedder calls per forward (image, text), each with the σ that forward received.
    per_call = 2
    assert len(calls) == per_call * len(seen)
    for index, (sigma, _) in enumerate(seen):
        assert [c.sigma for c in calls[per_call * index : per_call * (index + 1)]] == [sigma, sigma]
    if path == "heun":  # second-order evaluations repeat σ, and the embedder sees it repeated
        sigmas = [sigma for sigma, _ in seen]
        assert len(sigmas) > len(set(sigmas))
    logged = [str(c.args[0]) for c in ctx.logger.info.call_args_list if "DyPE enabled" in str(c.args[0])]
    assert logged == [
        "DyPE enabled: 256×256, vision_yarn, λs=2.00, λt=2.00, base 128 px, "
        "schedule: InvokeAI's own (resolution independent for FLUX.2)"
    ]
    assert_unpatched(transformer, original)


def stock_output(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers.models.transformers.transformer_flux2 import Flux2PosEmbed

    return Flux2PosEmbed(theta=2000, axes_dim=(32, 32, 32, 32))(ids)


def test_t_and_l_axes_untouched_and_references_share_the_image_frequencies(services):
    fields = path_fields("reference", services)
    with record_embedder_calls(DyPEEmbedder, "embed") as calls:
        run_node(node(DyPEFlux2Denoise, **fields, **ON), services)
    image_calls = [c for c in calls if c.ids[:, 1:3].any()]
    text_calls = [c for c in calls if not c.ids[:, 1:3].any()]
    assert image_calls and text_calls
    t_columns, l_columns, spatial = slice(0, 32), slice(96, 128), slice(32, 96)
    for call in calls:
        (cos, sin), (stock_cos, stock_sin) = call.output, stock_output(call.ids)
        for columns in (t_columns, l_columns):
            assert torch.equal(cos[:, columns], stock_cos[:, columns])
            assert torch.equal(sin[:, columns], stock_sin[:, columns])
    call = image_calls[0]
    (cos, _), ids = call.output, call.ids
    assert not torch.equal(cos[:, spatial], stock_output(ids)[0][:, spatial])  # DyPE acts on H and W
    references = ids[:, 0] == 10
    assert references.any() and set(ids[~references, 0].tolist()) == {0}
    for reference in torch.nonzero(references).flatten()[:20].tolist():
        row, column = ids[reference, 1], ids[reference, 2]
        twin = torch.nonzero((ids[:, 0] == 0) & (ids[:, 1] == row) & (ids[:, 2] == column)).flatten()
        if twin.numel():
            assert torch.equal(cos[reference, spatial], cos[twin[0], spatial])
    plain_t = torch.cos(10 * base_frequencies(32, 2000)).float().repeat_interleave(2)
    assert torch.equal(cos[references][:, t_columns], plain_t.expand(int(references.sum()), -1))


class Boom(Exception):
    pass


@pytest.mark.parametrize("failure", [Boom("boom"), KeyboardInterrupt()])
def test_restored_after_an_error_or_a_cancel(failure, services, transformer):
    from invokeai.app.services.session_processor.session_processor_common import CanceledException

    original = transformer.pos_embed
    for raised in (failure, CanceledException()):
        ctx = services.context()
        ctx.util.flux2_step_callback.side_effect = raised
        with pytest.raises(type(raised)):
            run_node(node(DyPEFlux2Denoise, **ON), services, ctx)
        assert_unpatched(transformer, original)
        assert flux2_denoise._STATE.get() is None


def test_two_threads_each_get_their_own_behaviour(services, transformer):
    """One generation thread per GPU, each with its own model copy (InvokeAI's cache): DyPE on and off at once."""
    alone = {name: run_node(node(DyPEFlux2Denoise, **fields), services)[0]
             for name, fields in (("on", ON), ("off", {"dype_preset": "off"}))}  # fmt: skip
    barrier = threading.Barrier(2)
    results: dict[str, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(name: str, fields: dict[str, Any], model: torch.nn.Module) -> None:
        svc = FamilyServices(services.base, {**services.models, "flux2": model}, services.make_conditioning)
        svc.conditionings = services.conditionings
        try:
            barrier.wait()
            results[name] = run_node(node(DyPEFlux2Denoise, **fields), svc)[0]
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [
        threading.Thread(target=work, args=("on", ON, copy.deepcopy(transformer))),
        threading.Thread(target=work, args=("off", {"dype_preset": "off"}, copy.deepcopy(transformer))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert torch.equal(results["on"], alone["on"]) and torch.equal(results["off"], alone["off"])


def test_registered_once_and_wrapped_once():
    from invokeai.app.invocations import flux2_denoise as core_module
    from invokeai.backend.flux2.denoise import denoise as core_denoise

    dype.invokeai.register()
    dype.invokeai.register()
    assert InvocationRegistry.get_invocation_for_type("flux2_denoise") is DyPEFlux2Denoise
    assert core_module.denoise.__wrapped__ is core_denoise
    schema = DyPEFlux2Denoise.UIConfig
    assert (schema.title, schema.category, schema.version) == ("FLUX2 Denoise", "latents", "1.7.0")
    assert set(CoreFlux2Denoise.model_fields) < set(DyPEFlux2Denoise.model_fields)
    assert issubclass(DyPEFlux2Denoise, CoreFlux2Denoise)


def payload(**fields: Any) -> dict[str, Any]:
    ident = {"key": "k", "hash": "h", "name": "flux2", "base": "flux2", "type": "main"}
    base = {
        "type": "flux2_denoise",
        "id": "n1",
        "transformer": {"transformer": ident, "loras": []},
        "vae": {"vae": ident | {"type": "vae"}},
        "positive_text_conditioning": {"conditioning_name": "pos"},
    }
    return base | fields


def test_linear_ui_payload_defaults_to_auto():
    """The Linear UI sends no DyPE field to this node (FAMILIES.md §6): what it gets is the default."""
    adapter = InvocationRegistry.get_invocation_typeadapter()
    parsed = adapter.validate_python(payload(num_steps=4, scheduler="euler", width=1024, height=1024))
    assert type(parsed) is DyPEFlux2Denoise
    assert (parsed.dype_preset, parsed.dype_base_resolution, parsed.dype_isotropic) == ("auto", 2048, False)
    assert parsed.resolve_dype_config() is None  # 1024² ≤ 3072 px: InvokeAI's own behaviour
    big = adapter.validate_python(payload(width=4096, height=4096))
    assert big.resolve_dype_config().dype_scale == 4.0  # min(2·4096/2048, 8)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dype_preset", "on"),
        ("dype_scale", 9),
        ("dype_exponent", -1),
        ("dype_method", "longrope"),
        ("dype_base_resolution", 1000),
        ("dype_base_resolution", 0),
        ("dype_isotropic", "maybe"),
    ],
)
def test_bad_field_values_name_the_field(field: str, value: Any):
    adapter = InvocationRegistry.get_invocation_typeadapter()
    with pytest.raises(ValidationError, match=field):
        adapter.validate_python(payload(**{field: value}))
