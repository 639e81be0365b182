"""The DyPE input fields of the FLUX.2 and Z-Image nodes, built from the family's data.

Each function returns one `InputField` for a node class body; texts name the family's own numbers
(base resolution, the `auto` threshold) so the UI says what the node will do.
"""

from __future__ import annotations

from typing import Any

from invokeai.app.invocations.fields import InputField

from dype.config import DYPE_EXPONENT_RANGE, DYPE_SCALE_RANGE
from dype.families import RopeFamily
from dype.presets import AUTO_ACTIVATION_FACTOR

DYPE_METHOD_LABELS: dict[str, str] = {
    "vision_yarn": "Vision YaRN (default)",
    "yarn": "YaRN (official DyPE)",
    "ntk": "NTK",
    "base": "None (plain RoPE, for comparison)",
}
DYPE_SHIFT_LABELS: dict[str, str] = {
    "official": "Official (1024 px schedule)",
    "stock": "Stock (resolution shift)",
}
UI_ORDER = 100  # after every core field


def preset_labels(family: RopeFamily) -> dict[str, str]:
    threshold = int(AUTO_ACTIVATION_FACTOR * family.base_resolution)
    return {
        "off": "Off",
        "manual": "Manual",
        "auto": f"Auto (>{threshold}px)",
        "area": "Area (auto)",
        "4k": "4K Optimized",
    }


def preset_field(family: RopeFamily, default: str) -> Any:
    threshold = int(AUTO_ACTIVATION_FACTOR * family.base_resolution)
    return InputField(
        title="DyPE Preset",
        default=default,
        description=(
            f"DyPE lets {family.title} generate above its native size without repeated or broken "
            f"structure. 'auto' (default): off up to {threshold} px on the longer side (1.5 × the base "
            "resolution; the image is then exactly what InvokeAI's own node makes), on above it with a strength "
            "from the size. 'area': like auto, from the image area. '4k': fixed settings (scale 2, exponent 2). "
            "'manual': the scale and exponent below. 'off': no DyPE. Only 'manual' reads scale and exponent."
        ),
        ui_order=UI_ORDER,
        ui_choice_labels=preset_labels(family),
    )


def scale_field() -> Any:
    return InputField(
        title="DyPE Scale",
        default=None,
        ge=DYPE_SCALE_RANGE[0],
        le=DYPE_SCALE_RANGE[1],
        description=(
            "DyPE strength (λs, 0–8): how far the early, noisy steps stretch the position encoding. "
            "Read by preset 'manual' only (empty: 2); 'off', 'auto', 'area' and '4k' ignore it."
        ),
        ui_order=UI_ORDER + 1,
    )


def exponent_field() -> Any:
    return InputField(
        title="DyPE Exponent",
        default=None,
        ge=DYPE_EXPONENT_RANGE[0],
        le=DYPE_EXPONENT_RANGE[1],
        description=(
            "DyPE decay (λt, 0–1000): how fast the stretch fades as the image forms; higher hands over to fine "
            "detail sooner. Read by preset 'manual' only (empty: 2)."
        ),
        ui_order=UI_ORDER + 2,
    )


def method_field() -> Any:
    return InputField(
        title="DyPE Method",
        default="vision_yarn",
        description=(
            "How DyPE rescales the position encoding. 'vision_yarn' (default) and 'yarn' keep fine detail sharp; "
            "'ntk' is simpler; 'base' disables the rescaling (for comparisons)."
        ),
        ui_order=UI_ORDER + 3,
        ui_choice_labels=DYPE_METHOD_LABELS,
    )


def base_resolution_field(family: RopeFamily, advice: str) -> Any:
    return InputField(
        title="DyPE Base Resolution",
        default=family.base_resolution,
        gt=0,
        multiple_of=family.pixels_per_token,
        description=(
            f"The size in pixels the model handles without help (multiple of {family.pixels_per_token}); DyPE "
            f"extrapolates beyond it. Default {family.base_resolution}: {family.base_resolution_source}. {advice}"
        ),
        ui_order=UI_ORDER + 4,
    )


def isotropic_field(family: RopeFamily, why: str) -> Any:
    return InputField(
        title="DyPE Isotropic",
        default=family.isotropic,
        description=f"Stretch both image axes by the larger of the two scales. {why}",
        ui_order=UI_ORDER + 5,
    )


def shift_field(description: str) -> Any:
    return InputField(
        title="DyPE Schedule Shift",
        default="official",
        description=description,
        ui_order=UI_ORDER + 6,
        ui_choice_labels=DYPE_SHIFT_LABELS,
    )
