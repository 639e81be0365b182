"""The family core: registry values, stock equality per family, plain axes, axis independence, the
boundary guard and the worked ramp boundaries of docs/families.md, looped over families × methods."""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch

import dype
from dype import DYPE_METHOD_REGISTRY, FAMILIES, DyPEConfig, DyPEEmbedder, dype_frequencies, embed_ids
from dype.embed import DyPEPosEmbed, DyPERopeEmbedder
from dype.math import base_frequencies, correction_range

METHODS = sorted(DYPE_METHOD_REGISTRY)
SIGMAS = (1.0, 0.6, 0.2, 0.0)


def test_registry_holds_the_contract_values() -> None:
    rows = {
        name: (f.theta, f.axes_dim, f.row_axis, f.column_axis, f.pixels_per_token, f.base_resolution, f.isotropic,
               f.layouts, f.rounding, f.time_input, f.dype_mu)
        for name, f in FAMILIES.items()
    }  # fmt: skip
    assert rows == {
        "flux1": (10000, (16, 56, 56), 1, 2, 16, 1024, False, ("bfl", "diffusers"), "float64_angle", "sigma", 1.15),
        "flux2": (2000, (32, 32, 32, 32), 1, 2, 16, 2048, False, ("diffusers",), "float64_angle", "sigma", 2.02),
        "z_image": (256, (32, 48, 48), 1, 2, 16, 1024, True, ("complex",), "float32_angle",
                    "one_minus_sigma_scaled", 1.15),
        "chroma": (10000, (16, 56, 56), 1, 2, 16, 1024, False, ("diffusers",), "float64_angle", "sigma", 1.15),
    }  # fmt: skip
    assert [FAMILIES[name].plain_axes for name in FAMILIES] == [(0,), (0, 3), (0,), (0,)]
    for family in FAMILIES.values():  # an unverified number says so
        assert family.base_resolution_source.startswith("assumed") == (family.name != "flux1")


# --- ids as each host lays them --------------------------------------------------------------------


def flux2_ids(rows: int, cols: int, text: int = 5, references: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX.2 (T, H, W, L) int64: the image (T 0), `references` of half size (T 10, 20, ...), the text (L 0..n−1)."""
    grids = []
    for index, (h, w) in enumerate([(rows, cols)] + [(rows // 2, cols // 2)] * references):
        r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        t = torch.full_like(r, 0 if index == 0 else 10 * index)
        grids.append(torch.stack([t, r, c, torch.zeros_like(r)], -1).reshape(-1, 4))
    text_ids = torch.zeros(text, 4, dtype=torch.long)
    text_ids[:, 3] = torch.arange(text)
    return torch.cat(grids), text_ids


def z_image_ids(rows: int, cols: int, caption: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-Image int32: caption (1..Lc, 0, 0) padded with (0, 0, 0) to 32; image (Lc+1, r, c) padded to 32."""
    padded = -(-caption // 32) * 32
    cap = torch.zeros(padded, 3, dtype=torch.int32)
    cap[:caption, 0] = torch.arange(1, caption + 1, dtype=torch.int32)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    image = torch.stack([torch.full_like(r, padded + 1), r, c], -1).reshape(-1, 3).int()
    pad = (-image.shape[0]) % 32
    return torch.cat([image, torch.zeros(pad, 3, dtype=torch.int32)]), cap


def flux_ids_2d(rows: int, cols: int, text: int = 4) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    image = torch.stack([torch.zeros_like(r), r, c], -1).reshape(-1, 3)
    return torch.cat([torch.zeros(text, 3, dtype=torch.long), image]).float()


def stock_embedder(name: str):
    """The host's own embedder, built as the host builds it, and a DyPE drop-in built from it."""
    if name == "flux2":
        from diffusers.models.transformers.transformer_flux2 import Flux2PosEmbed

        stock = Flux2PosEmbed(theta=2000, axes_dim=(32, 32, 32, 32))
        return stock, lambda config: DyPEPosEmbed.from_pos_embed(stock, config, family="flux2")
    if name == "z_image":
        from diffusers.models.transformers.transformer_z_image import RopeEmbedder

        stock = RopeEmbedder(theta=256.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])
        return stock, lambda config: DyPERopeEmbedder(stock, config, family="z_image")
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    stock = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])  # FLUX.1 diffusers and Chroma
    return stock, lambda config: DyPEPosEmbed.from_pos_embed(stock, config, family=name)


def host_id_sets(name: str, rows: int, cols: int) -> list[torch.Tensor]:
    if name == "flux2":
        return list(flux2_ids(rows, cols))
    if name == "z_image":
        return list(z_image_ids(rows, cols))
    return [flux_ids_2d(rows, cols)]


def assert_same(ours, theirs) -> None:
    ours, theirs = (ours, theirs) if isinstance(ours, tuple) else ((ours,), (theirs,))
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["flux2", "z_image", "chroma", "flux1"])
@pytest.mark.parametrize("method", METHODS)
def test_at_or_below_base_every_method_equals_the_stock_embedder(name: str, method: str) -> None:
    family = FAMILIES[name]
    stock, build = stock_embedder(name)
    token_side = family.base_resolution // family.pixels_per_token
    for rows, cols in ((token_side, token_side), (token_side // 2, token_side // 4)):
        embedder = build(DyPEConfig(method=method))
        for sigma, ids in itertools.product(SIGMAS, host_id_sets(name, rows, cols)):
            embedder.set_step_state(sigma, width=cols * 16, height=rows * 16)
            assert_same(embedder(ids), stock(ids))


@pytest.mark.parametrize("name", ["flux2", "z_image", "chroma"])
def test_method_base_equals_the_stock_embedder_above_base(name: str) -> None:
    stock, build = stock_embedder(name)
    embedder = build(DyPEConfig(method="base"))
    embedder.set_step_state(0.5, width=4096, height=2048)
    for ids in host_id_sets(name, 24, 40):  # the grid's own size does not matter: the target size is set
        assert_same(embedder(ids), stock(ids))


def slot_columns(family, axis: int, layout: str) -> slice:
    """The output columns of one id axis (slots for complex/bfl, 2 per slot for diffusers)."""
    start = sum(family.axes_dim[:axis]) // 2
    width = family.axes_dim[axis] // 2
    factor = 2 if layout == "diffusers" else 1
    return slice(start * factor, (start + width) * factor)


@pytest.mark.parametrize("name", ["flux2", "z_image", "chroma"])
@pytest.mark.parametrize("method", ["ntk", "yarn", "vision_yarn"])
def test_plain_axes_are_untouched_and_spatial_axes_change(name: str, method: str) -> None:
    family = FAMILIES[name]
    stock, build = stock_embedder(name)
    embedder = build(DyPEConfig(method=method, dype_scale=4.0))
    for sigma, ids in itertools.product((1.0, 0.3), host_id_sets(name, 20, 30)):
        embedder.set_step_state(sigma, width=3 * family.base_resolution, height=2 * family.base_resolution)
        ours, theirs = embedder(ids), stock(ids)
        ours, theirs = (ours, theirs) if isinstance(ours, tuple) else ((ours,), (theirs,))
        for a, b in zip(ours, theirs, strict=True):
            for axis in family.plain_axes:
                columns = slot_columns(family, axis, family.layouts[0])
                assert torch.equal(a[:, columns], b[:, columns]), f"plain axis {axis} changed"
            for axis in family.spatial_axes:
                if ids[:, axis].any():  # (text ids sit at 0 there: sin 0 stays 0 whatever DyPE does)
                    columns = slot_columns(family, axis, family.layouts[0])
                    assert not torch.equal(a[:, columns], b[:, columns]), f"spatial axis {axis} unchanged"


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("method", ["ntk", "yarn", "base"])
def test_axis_independence_unless_isotropic(name: str, method: str) -> None:
    """A wide image (W = 2B, H = B) changes only the column axis; isotropic changes both alike."""
    family = FAMILIES[name]
    wide = dict(width=2 * family.base_resolution, height=family.base_resolution, sigma=0.5)
    rows, columns = (dype_frequencies(DyPEConfig(method=method, isotropic=False), name, **wide)[a]
                     for a in family.spatial_axes)  # fmt: skip
    plain = base_frequencies(family.axes_dim[family.row_axis], family.theta)
    assert torch.equal(rows.omega, plain) and rows.amplitude == 1.0
    assert torch.equal(columns.omega, plain) == (method == "base")
    iso_rows, iso_columns = (dype_frequencies(DyPEConfig(method=method, isotropic=True), name, **wide)[a]
                             for a in family.spatial_axes)  # fmt: skip
    assert torch.equal(iso_rows.omega, iso_columns.omega) and iso_rows.amplitude == iso_columns.amplitude
    assert torch.equal(iso_rows.omega, columns.omega) and iso_rows.amplitude == columns.amplitude
    default = dype_frequencies(DyPEConfig(method=method), name, **wide)  # the family's default
    assert torch.equal(default[family.row_axis].omega, (iso_rows if family.isotropic else rows).omega)


def test_vision_yarn_isotropic_interpolates_both_axes_by_the_larger_scale() -> None:
    wide = dict(width=3072, height=1024, sigma=0.0)  # κ = 0: slots j ≥ 11 are ω_base / s (Z-Image)
    _, rows, columns = dype_frequencies(DyPEConfig(), "z_image", **wide)
    plain = base_frequencies(48, 256)
    assert torch.equal(rows.omega, columns.omega) and torch.equal(rows.omega[11:], plain[11:] / 3)
    _, rows, columns = dype_frequencies(DyPEConfig(isotropic=False), "z_image", **wide)
    assert torch.equal(rows.omega[11:], plain[11:]) and torch.equal(columns.omega[11:], plain[11:] / 3)


# (family, B) → stage 1, stage 2, κ = 0 boundaries, the κ from which vision_yarn's guard acts.
WORKED_VALUES = {
    ("flux1", 1024): ((6, 8), (0, 5), (7, 8), 3.823),
    ("flux2", 2048): ((5, 7), (0, 5), (6, 7), 5.034),
    ("flux2", 1024): ((4, 6), (0, 4), (4, 5), 4.034),
    ("z_image", 1024): ((9, 12), (0, 8), (10, 11), 3.682),
    ("chroma", 1024): ((6, 8), (0, 5), (7, 8), 3.823),
}


@pytest.mark.parametrize(("name", "base"), list(WORKED_VALUES))
def test_worked_ramp_boundaries(name: str, base: int) -> None:
    family = FAMILIES[name]
    d, theta, tokens = family.axes_dim[family.row_axis], family.theta, base // family.pixels_per_token
    stage1, stage2, at_zero, guard_from = WORKED_VALUES[(name, base)]
    assert correction_range((1.25, 0.75), d, theta, tokens) == stage1
    assert correction_range((16.0, 2.0), d, theta, tokens) == stage2
    assert correction_range((1.0, 1.0), d, theta, tokens) == at_zero  # vision_yarn at t = 0: r^0 = 1
    assert math.log2(tokens * theta ** (2 / d) / (2 * math.pi)) == pytest.approx(guard_from, abs=5e-4)
    # Just below the guard the stage-2 ramp is the port's own; from it on, the guard keeps it from inverting.
    for kappa in (guard_from - 0.01, guard_from + 0.01, guard_from + 2):
        lo, hi = correction_range((16.0**kappa, 2.0**kappa), d, theta, tokens)
        assert 0 <= lo < hi <= d // 2 + 0.001


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("method", ["yarn", "vision_yarn"])
def test_boundary_guard_for_every_family(name: str, method: str) -> None:
    """κ from 0 to far past the guard: finite frequencies between ω_base/S·(NTK) and ω_base, never above."""
    family = FAMILIES[name]
    size = dict(width=4 * family.base_resolution, height=4 * family.base_resolution)
    plain = base_frequencies(family.axes_dim[family.row_axis], family.theta)
    previous = None
    for sigma in (1.0, 0.7, 0.4, 0.1, 0.024, 1e-4, 0.0):
        rows = dype_frequencies(DyPEConfig(method=method, dype_scale=8.0), name, **size, sigma=sigma)[1]
        assert torch.isfinite(rows.omega).all() and torch.all(rows.omega <= plain * (1 + 1e-12))
        assert torch.all(rows.omega >= plain / 4 * (1 - 1e-12) * 0.5)
        if previous is not None and method == "yarn":  # yarn returns monotonically to plain RoPE
            assert torch.all(rows.omega >= previous * (1 - 1e-12))
        previous = rows.omega
    if method == "yarn":
        assert torch.equal(previous, plain)


def test_z_image_complex_output_has_the_contract_angle_and_modulus() -> None:
    """complex64 [N, 64]: angle = float32(p·ω), modulus = the amplitude (1 on the index axis)."""
    family = FAMILIES["z_image"]
    config = DyPEConfig(method="yarn")
    image, _ = z_image_ids(40, 20)
    out = embed_ids(image, "z_image", config, width=1280, height=640, sigma=0.5)
    assert out.dtype == torch.complex64 and out.shape == (image.shape[0], 64)
    frequencies = dype_frequencies(config, "z_image", width=1280, height=640, sigma=0.5)
    for axis, axis_frequencies in enumerate(frequencies):
        columns = slot_columns(family, axis, "complex")
        angle = (image[:, axis].double()[:, None] * axis_frequencies.omega[None, :]).float()
        expected = torch.polar(torch.full_like(angle, axis_frequencies.amplitude), angle)
        assert torch.equal(out[:, columns], expected)
    assert frequencies[0].amplitude == 1.0 and frequencies[1].amplitude == pytest.approx(
        1 + 0.1 * math.log(1.25)
    )  # isotropic
    modulus = out.abs()
    assert torch.allclose(modulus[:, 16:], torch.full_like(modulus[:, 16:], frequencies[1].amplitude), atol=1e-6)


def test_reference_tokens_share_the_image_frequencies_and_keep_a_plain_index() -> None:
    """FLUX.2: a reference token at (T 10, r, c) gets the image's spatial rotation at (r, c); its T is plain."""
    image_ids, _ = flux2_ids(16, 16, references=1)
    embedder = DyPEEmbedder("flux2", DyPEConfig(), width=4096, height=4096, layout="diffusers")
    cos, sin = embedder(image_ids)
    reference = image_ids[:, 0] == 10
    target = (image_ids[:, 0] == 0) & (image_ids[:, 1] < 8) & (image_ids[:, 2] < 8)
    spatial = slice(32, 96)  # H and W slots, two columns each
    assert torch.equal(cos[reference][:, spatial], cos[target][:, spatial])
    assert torch.equal(sin[reference][:, spatial], sin[target][:, spatial])
    t_column = slot_columns(FAMILIES["flux2"], 0, "diffusers")
    expected_t = torch.cos(10 * base_frequencies(32, 2000)).float().repeat_interleave(2)
    assert torch.equal(cos[reference][0, t_column], expected_t)


def test_every_id_set_keeps_its_own_cached_output() -> None:
    """FLUX.2 embeds image and text ids every step: a repeated σ returns both cached results."""
    image_ids, text_ids = flux2_ids(20, 20)
    embedder = DyPEEmbedder("flux2", DyPEConfig(), width=4096, height=4096, layout="diffusers")
    embedder.set_step_state(0.8)
    first = [embedder(image_ids)[0].data_ptr(), embedder(text_ids)[0].data_ptr()]
    negative = text_ids[:3].clone()
    embedder(negative)
    assert [embedder(image_ids)[0].data_ptr(), embedder(text_ids)[0].data_ptr()] == first
    embedder.set_step_state(0.7)
    assert embedder(image_ids)[0].data_ptr() != first[0]


KEYWORD_ONLY_SIZES = [
    (dype.resolve_dype_config, ("auto", 2048, 2048)),
    (dype.dype_frequencies, (DyPEConfig(), "flux1", 2048, 2048, 0.5)),
    (dype.embed_ids, (torch.zeros(4, 3), "flux1", DyPEConfig(), 2048, 2048, 0.5)),
    (dype.DyPEExtension, (DyPEConfig(), 2048, 2048)),
    (dype.DyPEEmbedder, ("flux1", DyPEConfig(), 2048, 2048)),
    (DyPEEmbedder("flux1", DyPEConfig()).set_step_state, (0.5, 2048, 2048)),
]


@pytest.mark.parametrize(("function", "args"), KEYWORD_ONLY_SIZES, ids=lambda value: getattr(value, "__name__", ""))
def test_sizes_are_keyword_only(function, args) -> None:
    with pytest.raises(TypeError):
        function(*args)


def test_every_public_size_argument_is_keyword_only() -> None:
    """No public function or constructor of the core takes `width`/`height` positionally."""
    import dype.plan
    import dype.schedule

    checked = 0
    for module in (dype, dype.schedule, dype.plan):
        for name in dir(module):
            target = getattr(module, name)
            if (
                name.startswith("_")
                or not callable(target)
                or getattr(target, "__module__", "").split(".")[0] != "dype"
            ):
                continue
            for function in (target, getattr(target, "set_step_state", None)):
                if function is None:
                    continue
                parameters = inspect.signature(function).parameters
                for size in ("width", "height"):
                    if size in parameters:
                        checked += 1
                        assert parameters[size].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}({size})"
    assert checked >= 14
