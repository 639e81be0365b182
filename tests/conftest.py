"""Test-session setup shared by every test folder.

The torchvision fix must run before anything imports invokeai or diffusers: the CPU torch 2.13.0 wheel
meets a torchvision 0.28.0 build whose `import` fails with "operator torchvision::nms does not exist".
FLUX never uses the detection ops, so registering their schemas is enough (INVOKEAI_NOTES.md).
"""

from __future__ import annotations

import sys

import torch


def _import_torchvision_with_schema_fix() -> None:
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP_ALIVE.append(library)
        import torchvision  # noqa: F401
    except ImportError:
        pass  # torchvision absent: the core tests do not need it


_KEEP_ALIVE: list[object] = []
_import_torchvision_with_schema_fix()
