"""InvokeAI node-pack settings chosen at install time (`dype invokeai install --default-preset off|auto`).

This module lives outside `dype.invokeai` (and imports nothing of InvokeAI) so that a pack's `__init__.py`
can set it before `import dype.invokeai` defines the nodes.

InvokeAI's Linear UI sends no DyPE field to FLUX2 Denoise and Denoise - Z-Image, so the default of their
`dype_preset` field is what every Linear-UI user gets. It is `auto` (off up to 1.5× the base resolution,
so native sizes stay bit-identical to InvokeAI's node); a pack installed with `--default-preset off`
calls `set_default_preset("off")` before the nodes are defined. The value is read once, when the node
classes are created: changing it needs an InvokeAI restart.
"""

from __future__ import annotations

import logging

from dype.validation import check_choice

DEFAULT_PRESET_CHOICES: tuple[str, ...] = ("auto", "off")
_default_preset = "auto"
_nodes_defined = False


def set_default_preset(preset: str) -> None:
    """Set the `dype_preset` default of the FLUX.2 and Z-Image nodes (`auto` or `off`)."""
    global _default_preset
    preset = check_choice("default_preset", preset, DEFAULT_PRESET_CHOICES)
    if _nodes_defined and preset != _default_preset:
        logging.getLogger(__name__).warning(
            f"dype: default preset {preset!r} takes effect after an InvokeAI restart (the nodes already use "
            f"{_default_preset!r})"
        )
        return
    _default_preset = preset


def default_preset() -> str:
    """The default the node classes are created with (called once per node class)."""
    global _nodes_defined
    _nodes_defined = True
    return _default_preset
