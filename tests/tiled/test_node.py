"""The "Latents to Image - FLUX (tiled)" node: registered, in the schema, and run through invoke()."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace
from unittest.mock import MagicMock

import numpy as np
import pydantic
import pytest
import torch
from fastapi import FastAPI
from invokeai.app.invocations.baseinvocation import InvocationRegistry
from invokeai.app.invocations.fields import LatentsField
from invokeai.app.invocations.flux_vae_decode import FluxVaeDecodeInvocation
from invokeai.app.invocations.model import ModelIdentifierField, VAEField
from invokeai.app.util.custom_openapi import get_openapi_func
from invokeai.backend.model_manager.taxonomy import BaseModelType, ModelType

from dype.invokeai.tiled_decode import FluxVaeDecodeTiledInvocation, ensure_registered

VAE_ID = ModelIdentifierField(key="vae", hash="h", name="FLUX VAE", base=BaseModelType.Flux, type=ModelType.VAE)


def _node(**fields) -> FluxVaeDecodeTiledInvocation:
    return FluxVaeDecodeTiledInvocation(
        id="decode", latents=LatentsField(latents_name="latents"), vae=VAEField(vae=VAE_ID), **fields
    )


def _context(vae: torch.nn.Module, latents: torch.Tensor) -> tuple[MagicMock, dict]:
    """A MagicMock InvocationContext as upstream's tests build one; records what the node did."""
    seen: dict = {"working_mem": [], "images": []}
    vae_info = MagicMock()
    vae_info.model = vae
    vae_info.compute_device = torch.device("cpu")

    @contextmanager
    def model_on_device(working_mem_bytes=None):
        seen["working_mem"].append(working_mem_bytes)
        yield (None, vae)

    vae_info.model_on_device = model_on_device
    context = MagicMock()
    context.tensors.load.return_value = latents
    context.models.load.return_value = vae_info

    def save(image):
        seen["images"].append(np.asarray(image))
        return SimpleNamespace(image_name="out.png", width=image.width, height=image.height)

    context.images.save.side_effect = save
    return context, seen


def test_node_is_registered():
    cls = InvocationRegistry.get_invocation_for_type("flux_vae_decode_tiled")
    assert cls is FluxVaeDecodeTiledInvocation
    assert cls.UIConfig.title == "Latents to Image - FLUX (tiled)"
    # Same inputs as the core node, plus the two tiling fields.
    core = set(FluxVaeDecodeInvocation.model_fields)
    assert set(cls.model_fields) == core | {"tile_size", "overlap"}
    assert cls.model_fields["tile_size"].default == 1024
    assert InvocationRegistry.get_invocation_for_type("flux_vae_decode") is FluxVaeDecodeInvocation


def test_ensure_registered_restores_a_lost_registration():
    original = InvocationRegistry._invocation_classes  # the registry has no public unregister
    InvocationRegistry._invocation_classes = {c for c in original if c is not FluxVaeDecodeTiledInvocation}
    InvocationRegistry.invalidate_invocation_typeadapter()
    try:
        assert InvocationRegistry.get_invocation_for_type("flux_vae_decode_tiled") is None
        ensure_registered()
        ensure_registered()  # idempotent
        assert InvocationRegistry.get_invocation_for_type("flux_vae_decode_tiled") is FluxVaeDecodeTiledInvocation
    finally:
        InvocationRegistry._invocation_classes = original
        InvocationRegistry.invalidate_invocation_typeadapter()


def test_type_adapter_builds_it_from_a_graph_dict():
    adapter = InvocationRegistry.get_invocation_typeadapter()
    node = adapter.validate_python(
        {
            "type": "flux_vae_decode_tiled",
            "id": "n",
            "tile_size": 512,
            "overlap": 64,
            "vae": {"vae": VAE_ID.model_dump()},
        }
    )
    assert isinstance(node, FluxVaeDecodeTiledInvocation)
    assert (node.tile_size, node.overlap) == (512, 64)
    with pytest.raises(pydantic.ValidationError, match="tile_size"):
        adapter.validate_python({"type": "flux_vae_decode_tiled", "id": "n", "tile_size": 100})


class _Ping(pydantic.BaseModel):
    ok: bool


def test_openapi_schema_lists_the_node():
    app = FastAPI()
    # InvokeAI's generator adds the nodes to an existing components section; one route makes one.
    app.get("/ping", response_model=_Ping)(lambda: _Ping(ok=True))
    app.openapi = get_openapi_func(app)
    schema = app.openapi()
    component = schema["components"]["schemas"]["FluxVaeDecodeTiledInvocation"]
    assert component["properties"]["type"]["default"] == "flux_vae_decode_tiled"
    assert component["title"] == "Latents to Image - FLUX (tiled)"
    assert {"tile_size", "overlap", "latents", "vae"} <= set(component["properties"])


@pytest.mark.parametrize("layout", ["bfl", "diffusers"])
def test_invoke_decodes_like_the_core_node(layout, bfl_vae, diffusers_vae, latents):
    vae = bfl_vae if layout == "bfl" else diffusers_vae
    context, seen = _context(vae, latents)
    output = _node(tile_size=128, overlap=32).invoke(context)
    assert (output.width, output.height) == (256, 256)
    assert seen["working_mem"][0] > 0

    core_context, core_seen = _context(vae, latents)
    FluxVaeDecodeInvocation(id="core", latents=LatentsField(latents_name="l"), vae=VAEField(vae=VAE_ID)).invoke(
        core_context
    )
    ours, core = seen["images"][0].astype(float), core_seen["images"][0].astype(float)
    assert ours.shape == core.shape == (256, 256, 3)
    # Equal up to float rounding (test_tiled_vae), so at most a rare one-level flip at 8 bits.
    assert np.abs(ours - core).max() <= 1
    assert np.abs(ours - core).mean() < 0.01

    percentages = [c.args[1] for c in context.util.signal_progress.call_args_list if len(c.args) > 1]
    assert percentages[-1] == 1.0 and percentages == sorted(percentages)
    # park="auto" says in InvokeAI's log where the 9 waiting tiles went (this CPU's free RAM: the device).
    park_lines = [c.args[0] for c in context.logger.info.call_args_list if "dype tiled decode" in str(c.args)]
    assert len(park_lines) == 1 and "9 tiles" in park_lines[0] and "on cpu (auto" in park_lines[0]


def test_invoke_rejects_bad_overlap(bfl_vae, latents):
    context, _ = _context(bfl_vae, latents)
    with pytest.raises(ValueError, match="overlap"):
        _node(tile_size=128, overlap=72).invoke(context)
