"""Every case in ../shared/reference (copied here) must match, through the real embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dype import DyPEConfig, DyPEEmbedND, embed_ids
from tests.core.helpers import FLUX_AXES_DIM, THETA, flux_ids

REFERENCE = np.load(Path(__file__).with_name("dype_reference_sample.npz"))
CASES = range(len(REFERENCE["method"]))
# README tolerances: official code rounds float64 to float32 (~1e-7); the ComfyUI port is float32 (~3e-5).
TOLERANCE = {"official": 2e-7, "comfyui_v2.3.0": 3e-5}


def case_config(i: int) -> DyPEConfig:
    return DyPEConfig(
        enable_dype=bool(REFERENCE["enable_dype"][i]),
        method=str(REFERENCE["method"][i]),
        dype_scale=float(REFERENCE["dype_scale"][i]),
        dype_exponent=float(REFERENCE["dype_exponent"][i]),
        dype_start_sigma=float(REFERENCE["dype_start_sigma"][i]),
    )


def case_name(i: int) -> str:
    r = REFERENCE
    dyn = "dyn" if r["enable_dype"][i] else "static"
    return f"{r['method'][i]}-{dyn}-{r['height'][i]}x{r['width'][i]}-s{r['sigma'][i]:g}"


@pytest.mark.parametrize("i", CASES, ids=[case_name(i) for i in CASES])
def test_reference_case(i: int) -> None:
    height, width = int(REFERENCE["height"][i]), int(REFERENCE["width"][i])
    embedder = DyPEEmbedND(128, THETA, FLUX_AXES_DIM, case_config(i))
    embedder.set_step_state(float(REFERENCE["sigma"][i]), width=width, height=height)
    ids = flux_ids(height, width)
    pe = embedder(ids)

    index = torch.from_numpy(REFERENCE["tok_index"][i])
    assert torch.equal(ids[0, index], torch.from_numpy(REFERENCE["tok_ids"][i]))
    tolerance = TOLERANCE[str(REFERENCE["source"][i])]
    np.testing.assert_allclose(pe[0, 0, index, :, 0, 0].numpy(), REFERENCE["emb_cos"][i], rtol=0, atol=tolerance)
    np.testing.assert_allclose(pe[0, 0, index, :, 1, 0].numpy(), REFERENCE["emb_sin"][i], rtol=0, atol=tolerance)

    block = pe[0, 0, :, :, :, 0].double()  # (N, 64, 2): column 0 of each 2×2 = (cos, sin)
    cos, sin = block[..., 0], block[..., 1]
    sums = np.array([cos.sum(), sin.sum(), (cos**2).sum(), (sin**2).sum()])
    np.testing.assert_allclose(sums, REFERENCE["full_sums"][i], rtol=1e-6)


def test_embedder_equals_direct_computation() -> None:
    """The cached, gathered embedder gives exactly the numbers of the direct `embed_ids`."""
    config = DyPEConfig(method="yarn")
    ids = flux_ids(2048, 1536, text_tokens=7)
    embedder = DyPEEmbedND(128, THETA, FLUX_AXES_DIM, config)
    embedder.set_step_state(0.37, height=2048, width=1536)
    direct = embed_ids(ids, "flux1", config, width=1536, height=2048, sigma=0.37)
    assert torch.equal(embedder(ids), direct)
