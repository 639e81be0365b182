"""Write the example workflows of the FLUX.2 and Z-Image nodes from InvokeAI's own registry.

    .venv/bin/python scripts/make_workflows.py        # rewrites src/dype/invokeai/workflows/{flux2,z-image}-*.json

Each node's type, version and inputs come from the registered class (ours for the DyPE nodes), so the
files cannot name a field or version InvokeAI does not have; `tests/invokeai/test_workflows.py` checks
them against InvokeAI's workflow model and graph validation. (The FLUX.1 workflow was written by hand.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORKFLOWS = Path(__file__).resolve().parents[1] / "src" / "dype" / "invokeai" / "workflows"
NOT_INPUTS = {"id", "type", "is_intermediate", "use_cache"}
SPACING = 420


def node(node_id: str, node_type: str, column: int, row: int = 0, **values: Any) -> dict[str, Any]:
    """A workflow node: every input of the registered class, with its default or the given value."""
    from invokeai.app.invocations.baseinvocation import InvocationRegistry

    cls = InvocationRegistry.get_invocation_for_type(node_type)
    inputs: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if name in NOT_INPUTS:
            continue
        entry: dict[str, Any] = {"name": name, "label": ""}
        value = values.pop(name, info.default)
        if value is not None and not callable(value) and repr(value) != "PydanticUndefined":
            entry["value"] = value
        inputs[name] = entry
    assert not values, f"{node_type} has no inputs {sorted(values)}"
    pack = "dype" if cls.__module__.startswith("dype.") else "invokeai"
    data = {
        "id": node_id,
        "type": node_type,
        "version": cls.UIConfig.version,
        "label": "",
        "notes": "",
        "isOpen": True,
        "isIntermediate": node_type not in ("flux_vae_decode_tiled", "flux2_vae_decode"),
        "useCache": True,
        "nodePack": pack,
        "inputs": inputs,
    }
    return {"id": node_id, "type": "invocation", "data": data, "position": {"x": column * SPACING, "y": row * 380}}


def edge(source: str, source_field: str, target: str, target_field: str) -> dict[str, str]:
    return {
        "id": f"reactflow__edge-{source}{source_field}-{target}{target_field}",
        "type": "default",
        "source": source,
        "target": target,
        "sourceHandle": source_field,
        "targetHandle": target_field,
    }


def workflow(name: str, description: str, tags: str, notes: str, nodes: list, edges: list, exposed: list) -> dict:
    return {
        "name": name,
        "author": "dype",
        "description": description,
        "version": "1.0.0",
        "contact": "",
        "tags": tags,
        "notes": notes,
        "exposedFields": [{"nodeId": node_id, "fieldName": field} for node_id, field in exposed],
        "meta": {"version": "3.0.0", "category": "user"},
        "nodes": nodes,
        "edges": edges,
    }


PROMPT = (
    "a vast alpine valley at sunrise, a winding river, snow-capped peaks, pine forests, tiny wooden houses, "
    "ultra detailed landscape photograph"
)


def flux2() -> dict[str, Any]:
    parts = ("model-loader", "text-encoder", "seed", "denoise", "vae-decode")
    loader, encoder, seed, denoise, decode = (f"dype-flux2-{part}" for part in parts)
    nodes = [
        node(loader, "flux2_klein_model_loader", 0),
        node(encoder, "flux2_klein_text_encoder", 1, prompt=PROMPT),
        node(seed, "rand_int", 1, 1, low=0, high=2147483647),
        node(
            denoise,
            "flux2_denoise",
            2,
            width=2048,
            height=2048,
            num_steps=4,
            dype_preset="4k",
            dype_base_resolution=1024,
        ),
        node(decode, "flux2_vae_decode", 3),
    ]
    edges = [
        edge(loader, "transformer", denoise, "transformer"),
        edge(loader, "vae", denoise, "vae"),
        edge(loader, "qwen3_encoder", encoder, "qwen3_encoder"),
        edge(loader, "max_seq_len", encoder, "max_seq_len"),
        edge(encoder, "conditioning", denoise, "positive_text_conditioning"),
        edge(seed, "value", denoise, "seed"),
        edge(denoise, "latents", decode, "latents"),
        edge(loader, "vae", decode, "vae"),
    ]
    return workflow(
        "FLUX.2 Klein 2048×2048 - DyPE",
        "Text to image at 2048×2048 with FLUX.2 Klein (4B or 9B): FLUX2 Denoise with DyPE preset 4k on a 1024 px "
        "base resolution.",
        "flux2, klein, dype, text to image",
        "Needs the dype node pack (FLUX2 Denoise 1.7.0 with the DyPE fields). FLUX.2's native size is not "
        "published: dype's default base resolution is 2048 (auto then starts above 3072 px); this workflow sets "
        "1024 for Klein images that repeat or stretch above 1536 px — set 2048 if yours do not. 4 steps for the "
        "distilled Klein models, 28+ for Base. The untiled decode needs ~17 GB at 2048².",
        nodes,
        edges,
        [
            (loader, "model"),
            (loader, "qwen3_encoder_model"),
            (loader, "vae_model"),
            (encoder, "prompt"),
            (denoise, "dype_preset"),
            (denoise, "dype_base_resolution"),
            (denoise, "num_steps"),
        ],
    )


def z_image() -> dict[str, Any]:
    parts = ("model-loader", "text-encoder", "seed", "denoise", "vae-decode-tiled")
    loader, encoder, seed, denoise, decode = (f"dype-z-image-{part}" for part in parts)
    nodes = [
        node(loader, "z_image_model_loader", 0),
        node(encoder, "z_image_text_encoder", 1, prompt=PROMPT),
        node(seed, "rand_int", 1, 1, low=0, high=2147483647),
        node(denoise, "z_image_denoise", 2, width=3840, height=2160, steps=8, dype_preset="auto"),
        node(decode, "flux_vae_decode_tiled", 3, tile_size=1024, overlap=64),
    ]
    edges = [
        edge(loader, "transformer", denoise, "transformer"),
        edge(loader, "qwen3_encoder", encoder, "qwen3_encoder"),
        edge(encoder, "conditioning", denoise, "positive_conditioning"),
        edge(seed, "value", denoise, "seed"),
        edge(denoise, "latents", decode, "latents"),
        edge(loader, "vae", decode, "vae"),
    ]
    return workflow(
        "Z-Image 3840×2160 - DyPE + tiled decode",
        "Text to image at 3840×2160 with Z-Image Turbo: Denoise - Z-Image with DyPE (auto) and the 1024² "
        "schedule, decoded tile by tile with Latents to Image - FLUX (tiled) (Z-Image uses the FLUX VAE).",
        "z-image, dype, 4k, text to image, tiled",
        "Needs the dype node pack (Denoise - Z-Image 1.7.0 with the DyPE fields, and Latents to Image - FLUX "
        "(tiled)). 8 steps for Turbo. With the Shift field empty, DyPE uses the 1024² shift (3.158) at every "
        "size; InvokeAI's own shift at 3840×2160 (380) would keep 7 of 8 steps at pure noise. On 8-12 GB cards "
        "set the decode's tile size to 512.",
        nodes,
        edges,
        [
            (loader, "model"),
            (loader, "qwen3_encoder_model"),
            (loader, "vae_model"),
            (encoder, "prompt"),
            (denoise, "dype_preset"),
            (denoise, "steps"),
            (decode, "tile_size"),
        ],
    )


def main() -> None:
    from dype._torchvision_compat import import_torchvision

    import_torchvision()
    import importlib

    import invokeai.app.invocations as core

    for module in core.__all__:  # every core node, as InvokeAI's startup imports them
        importlib.import_module(f"invokeai.app.invocations.{module}")

    import dype.invokeai  # noqa: F401  (ours)

    for filename, build in (("flux2-klein-2048-dype.json", flux2), ("z-image-3840x2160-dype-tiled.json", z_image)):
        path = WORKFLOWS / filename
        path.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
