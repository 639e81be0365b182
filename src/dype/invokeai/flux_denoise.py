"""The `flux_denoise` override: InvokeAI's FLUX Denoise, running dype's DyPE instead of the built-in one.

Same type name, title and fields as `invokeai==6.14.2`'s node (so the Linear UI, which builds a
`flux_denoise` node and sets `dype_preset`/`dype_scale`/`dype_exponent` by name, and every saved
workflow use it), a minor version bump, and two new fields: `dype_method` and `dype_shift`.
The sampling code stays InvokeAI's: `_run_diffusion` runs unchanged under a `DenoiseState` that the
dispatch wrappers (`dype.invokeai.dispatch`) read.
"""

from invokeai.app.invocations.baseinvocation import InvocationRegistry, invocation
from invokeai.app.invocations.fields import InputField
from invokeai.app.invocations.flux_denoise import FluxDenoiseInvocation as CoreFluxDenoiseInvocation
from invokeai.app.services.shared.invocation_context import InvocationContext
from invokeai.backend.flux.dype.presets import DYPE_PRESET_LABELS, DyPEPreset
from invokeai.backend.util.devices import TorchDevice

from dype import DyPEConfig
from dype.config import DyPEMethod
from dype.families import FLUX1
from dype.invokeai.dispatch import DenoiseState, DyPEShift, active_state, install
from dype.invokeai.dype_fields import DYPE_METHOD_LABELS
from dype.invokeai.memory_plan import log_memory_plan
from dype.presets import resolve_dype_config

INVOCATION_TYPE = "flux_denoise"
INVOCATION_VERSION = "4.7.0"  # core 6.14.2 is 4.6.0; new optional fields = minor bump

DYPE_SHIFT_LABELS: dict[str, str] = {
    "official": f"Official (μ = {FLUX1.dype_mu:g})",
    "stock": "Stock (FLUX resolution shift)",
}


@invocation(
    INVOCATION_TYPE,
    title="FLUX Denoise",
    tags=["image", "flux"],
    category="latents",
    version=INVOCATION_VERSION,
)
class FluxDenoiseInvocation(CoreFluxDenoiseInvocation):
    """Run denoising process with a FLUX transformer model. DyPE (high resolution) by the dype package."""

    # The class keeps the core name: InvokeAI's OpenAPI schema names each node's component after its class.

    dype_preset: DyPEPreset = InputField(
        title="DyPE Preset",
        default="off",
        description=(
            "DyPE lets FLUX generate above 1024 px without repeated or broken structure. "
            "'off': no DyPE. 'auto': on above 1536 px (longer side), strength from the size. "
            "'area': like auto, but from the image area (milder for panoramas). "
            "'4k': settings tuned for 3840×2160 and 4096×2160. 'manual': the scale and exponent below. "
            "Only 'manual' reads the scale and exponent."
        ),
        ui_order=100,
        ui_choice_labels=DYPE_PRESET_LABELS,
    )
    dype_scale: float | None = InputField(
        title="DyPE Scale",
        default=None,
        ge=0.0,
        le=8.0,
        description=(
            "DyPE strength (λs, 0–8): how far the early, noisy steps stretch the position encoding. "
            "Read by preset 'manual' only (empty: 2); 'off', 'auto', 'area' and '4k' ignore it."
        ),
        ui_order=101,
    )
    dype_exponent: float | None = InputField(
        title="DyPE Exponent",
        default=None,
        ge=0.0,
        le=1000.0,
        description=(
            "DyPE decay (λt, 0–1000): how fast the stretch fades as the image forms. Higher values hand "
            "over to fine detail sooner. Read by preset 'manual' only (empty: 2)."
        ),
        ui_order=102,
    )
    dype_method: DyPEMethod = InputField(
        title="DyPE Method",
        default="vision_yarn",
        description=(
            "How DyPE rescales the position encoding. 'vision_yarn' (default) and 'yarn' keep fine "
            "detail sharp; 'ntk' is simpler; 'base' disables the rescaling (for comparisons)."
        ),
        ui_order=103,
        ui_choice_labels=DYPE_METHOD_LABELS,
    )
    dype_shift: DyPEShift = InputField(
        title="DyPE Schedule Shift",
        default="official",
        description=(
            "Noise schedule while DyPE is on. 'official' uses the 1024 px schedule (μ = 1.15) at every "
            "size, as DyPE was designed; 'stock' keeps FLUX's resolution shift, which at 4K spends "
            "nearly every step at pure noise. Ignored by heun, lcm and FLUX schnell."
        ),
        ui_order=104,
        ui_choice_labels=DYPE_SHIFT_LABELS,
    )

    def resolve_dype_config(self) -> DyPEConfig | None:
        """Our DyPE config for this node's fields (None = DyPE off); ValueError on bad input."""
        return resolve_dype_config(
            self.dype_preset,
            width=self.width,
            height=self.height,
            dype_scale=self.dype_scale,
            dype_exponent=self.dype_exponent,
            method=self.dype_method,
        )

    def _run_diffusion(self, context: InvocationContext):
        install()  # idempotent; makes the node work even if only this module was imported
        config = self.resolve_dype_config()
        if config is not None and max(self.width, self.height) > config.base_resolution_for(FLUX1):
            _log_memory_plan(context, self.width, self.height)
        state = DenoiseState(
            config=config,
            width=self.width,
            height=self.height,
            shift=self.dype_shift,
            scheduler=self.scheduler,
            logger=context.logger,
        )
        with active_state(state):
            return super()._run_diffusion(context)


def _log_memory_plan(context: InvocationContext, width: int, height: int) -> None:
    """Log what a generation this large will need, and whether an untiled decode would fit."""
    log_memory_plan(context.logger, width=width, height=height, device=TorchDevice.choose_torch_device())


def ensure_registered() -> None:
    """Make "flux_denoise" resolve to our class again if something registered another one since."""
    if InvocationRegistry.get_invocation_for_type(INVOCATION_TYPE) is not FluxDenoiseInvocation:
        InvocationRegistry.register_invocation(FluxDenoiseInvocation)
