"""A picture of a `dype.plan.Plan`: one heatmap per spatial axis of ω/ω_base, and σ, κ over the steps."""

from __future__ import annotations

from pathlib import Path

from dype.extras import import_extra
from dype.plan import Plan
from dype.validation import check_output_file


def plot_plan(plan: Plan, path: Path, title: str = "") -> Path:
    """Write the plan as a PNG at `path` (matplotlib, headless) and return the path written.

    `path` must end in .png (nothing is appended to it) and may not be a folder; missing parent folders are
    created. Raises ValueError for such a path, `dype.extras.MissingExtraError` without matplotlib (the
    `cli` extra), OSError when the file cannot be written.
    """
    path = check_output_file("path", path)
    matplotlib = import_extra("matplotlib", extra="cli", purpose="plotting a plan")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    steps = np.arange(1, len(plan.steps) + 1)
    ratios = [np.array([step.axes[axis].ratio for step in plan.steps]) for axis in (0, 1)]
    low = min(float(r.min()) for r in ratios)
    norm = LogNorm(vmin=min(low, 0.999), vmax=1.0)

    figure, panels = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    for panel, ratio, name, scale in zip(
        panels[:2], ratios, ("rows (height)", "columns (width)"), plan.axis_scales, strict=True
    ):
        image = panel.imshow(
            ratio,
            aspect="auto",
            origin="upper",
            cmap="viridis",
            norm=norm,
            extent=(-0.5, ratio.shape[1] - 0.5, len(steps) + 0.5, 0.5),
        )
        panel.set_title(f"ω / ω_base, {name}, scale {scale:.3g}")
        panel.set_xlabel("frequency slot j (0 = lowest index, highest frequency)")
        panel.set_ylabel("sampling step")
        figure.colorbar(image, ax=panel, label="ω / ω_base (1 = plain RoPE)")

    sigma_panel = panels[2]
    sigma_panel.plot(steps, [s.sigma for s in plan.steps], "o-", color="tab:blue", label="σ (model input)")
    sigma_panel.set_xlabel("sampling step")
    sigma_panel.set_ylabel("σ", color="tab:blue")
    sigma_panel.set_ylim(-0.02, 1.02)
    kappas = [s.kappa for s in plan.steps]
    kappa_panel = sigma_panel.twinx()
    if all(k is not None for k in kappas):
        kappa_panel.plot(steps, kappas, "s-", color="tab:red", label="κ")
    kappa_panel.set_ylabel("κ (extrapolation strength)", color="tab:red")
    mu = "no shift" if plan.mu is None else f"μ = {plan.mu:.2f}"
    sigma_panel.set_title(f"schedule ({mu}) and κ")
    handles = sigma_panel.get_legend_handles_labels()[0] + kappa_panel.get_legend_handles_labels()[0]
    sigma_panel.legend(handles=handles, loc="upper right")

    figure.suptitle(f"DyPE plan, {plan.family.title}, {plan.width}×{plan.height} (W×H): {title}")
    figure.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110, format="png")
    finally:
        plt.close(figure)
    return path
