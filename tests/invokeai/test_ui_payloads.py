"""Issue #13 item 1: the payloads InvokeAI's UIs send, replayed through the real type adapter and node.

The Linear UI sends `dype_scale = 2, dype_exponent = 2` with every preset, "Off" included; the workflow
editor sends 0 and 0 for the empty fields. Only `manual` reads them (docs/math.md §7), so "Off" is off
(bit-identical to InvokeAI's node, schedule not pinned) and `auto` keeps its own strength.
"""

from __future__ import annotations

import pytest
import torch
from invokeai.app.invocations.baseinvocation import InvocationRegistry

from dype.invokeai.flux_denoise import FluxDenoiseInvocation

from .conftest import node, record_calls, run
from .graphs import linear_ui_flux_batch

UI_SCALES = {"linear ui": (2, 2), "workflow editor": (0, 0)}


def flux_denoise_payload(width: int, height: int, **dype: object) -> dict:
    """The `flux_denoise` node exactly as the Linear UI's graph holds it (edges' fields stay unset)."""
    graph = linear_ui_flux_batch(width=width, height=height, **dype)["batch"]["graph"]
    (payload,) = [n for n in graph["nodes"].values() if n["type"] == "flux_denoise"]
    return payload | {"transformer": {"transformer": {"key": "flux", "hash": "blake3:flux", "name": "flux",
                                                      "base": "flux", "type": "main"}, "loras": []},
                      "positive_text_conditioning": {"conditioning_name": "pos"}}  # fmt: skip


def parsed(width: int, height: int, **dype: object) -> FluxDenoiseInvocation:
    node_object = InvocationRegistry.get_invocation_typeadapter().validate_python(
        flux_denoise_payload(width, height, **dype)
    )
    assert type(node_object) is FluxDenoiseInvocation
    return node_object


@pytest.mark.parametrize("ui", list(UI_SCALES))
@pytest.mark.parametrize(("width", "height"), [(768, 768), (1536, 1536), (1216, 832), (3840, 2160)])
def test_off_is_off(ui: str, width: int, height: int) -> None:
    scale, exponent = UI_SCALES[ui]
    assert (
        parsed(width, height, dype_preset="off", dype_scale=scale, dype_exponent=exponent).resolve_dype_config()
        is None
    )


@pytest.mark.parametrize("ui", list(UI_SCALES))
def test_auto_area_and_4k_keep_their_own_strength(ui: str) -> None:
    scale, exponent = UI_SCALES[ui]
    sent = dict(dype_scale=scale, dype_exponent=exponent)
    auto = parsed(3840, 2160, dype_preset="auto", **sent).resolve_dype_config()
    assert (auto.dype_scale, auto.dype_exponent) == (7.5, 2.0)  # min(2·3840/1024, 8), not the UI's 2 (or 0)
    area = parsed(3840, 2160, dype_preset="area", **sent).resolve_dype_config()
    assert area.dype_scale == pytest.approx(2 * (3840 * 2160) ** 0.5 / 1024) and area.dype_exponent == 2.0
    four_k = parsed(3840, 2160, dype_preset="4k", **sent).resolve_dype_config()
    assert (four_k.dype_scale, four_k.dype_exponent) == (2.0, 2.0)
    for size in ((768, 768), (1536, 1536), (1216, 832)):  # auto and area are off at these sizes
        assert parsed(*size, dype_preset="auto", **sent).resolve_dype_config() is None
        assert parsed(*size, dype_preset="area", **sent).resolve_dype_config() is None


def test_manual_takes_what_the_ui_sends() -> None:
    manual = parsed(3840, 2160, dype_preset="manual", dype_scale=0, dype_exponent=0).resolve_dype_config()
    assert (manual.dype_scale, manual.dype_exponent) == (0.0, 0.0)  # 0 is taken as given


def test_linear_ui_off_payload_is_invokeais_own_generation(services, dev_model, core_class) -> None:
    """The Linear UI's "Off" at 768² (scale 2, exponent 2): the image and every σ are InvokeAI's own."""
    fields = dict(width=768, height=768, num_steps=2, dype_preset="off", dype_scale=2.0, dype_exponent=2.0)
    with record_calls(dev_model) as core_calls:
        expected, _ = run(node(core_class, **fields), services)
    with record_calls(dev_model) as our_calls:
        got, ctx = run(node(FluxDenoiseInvocation, **fields), services)
    assert torch.equal(got, expected)
    assert [c.model_sigma for c in our_calls] == [c.model_sigma for c in core_calls][: len(our_calls)]
    assert {c.embedder for c in our_calls} == {"EmbedND"}
    assert not any("DyPE enabled" in str(call) for call in ctx.logger.info.call_args_list)
