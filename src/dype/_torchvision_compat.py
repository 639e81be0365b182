"""Import torchvision next to a CPU torch whose build it does not match (tests and benchmarks only).

The CPU torch 2.13.0 wheel next to the torchvision 0.28.0 that `invokeai` pulls in fails on import with
"operator torchvision::nms does not exist". FLUX never uses the detection ops, so registering their two
schemas lets everything else import. Nothing is registered when torchvision imports
cleanly: a matching build would then crash on a duplicate definition.
"""

from __future__ import annotations

import sys

import torch

_LIBRARIES: list[torch.library.Library] = []  # kept alive: dropping a Library unregisters its ops


def import_torchvision() -> bool:
    """Import torchvision, registering the missing detection-op schemas if that is what stops it.

    Returns:
        True if torchvision is importable afterwards, False if it is not installed.
    """
    try:
        import torchvision
    except ImportError:
        return False
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARIES.append(library)
        import torchvision  # noqa: F401
    return True
