"""Graph payloads the way InvokeAI 6.14.2's web UI builds them (no tests here).

* `linear_ui_flux_batch`: the enqueue body of the Linear UI's FLUX text-to-image (`buildFLUXGraph` in
  `invokeai/frontend/web/dist/assets/App-*.js`): a `flux_denoise` node with guidance, steps, scheduler,
  width/height, denoising start/end and `dype_preset`/`dype_scale`/`dype_exponent`, a `core_metadata` node,
  the seed and prompt as `integer`/`string` nodes filled in by the batch data.
* `workflow_graph`: what the workflow editor enqueues for a saved workflow (every node's input values,
  minus the inputs an edge feeds, plus `is_intermediate`/`use_cache`).
"""

from __future__ import annotations

import copy
from typing import Any

FLUX_MODELS: dict[str, dict[str, Any]] = {
    "model": {"key": "flux-dev", "hash": "blake3:0", "name": "FLUX.1 dev", "base": "flux", "type": "main"},
    "t5_encoder_model": {"key": "t5", "hash": "blake3:1", "name": "T5", "base": "any", "type": "t5_encoder"},
    "clip_embed_model": {"key": "clip", "hash": "blake3:2", "name": "CLIP-L", "base": "any", "type": "clip_embed"},
    "vae_model": {"key": "vae", "hash": "blake3:3", "name": "FLUX VAE", "base": "flux", "type": "vae"},
}


def _edge(source: str, source_field: str, target: str, target_field: str) -> dict[str, Any]:
    return {
        "source": {"node_id": source, "field": source_field},
        "destination": {"node_id": target, "field": target_field},
    }


def linear_ui_flux_batch(
    width: int = 3840, height: int = 2160, seed: int = 42, prompt: str = "a lighthouse", **denoise: Any
) -> dict[str, Any]:
    """The Linear UI's enqueue body for FLUX txt2img; `denoise` overrides (or adds) `flux_denoise` fields."""
    ids = {
        name: f"{name}:dype-test"
        for name in (
            "positive_prompt",
            "seed",
            "flux_vae_decode",
            "flux_model_loader",
            "flux_text_encoder",
            "flux_denoise",
            "pos_cond_collect",
            "core_metadata",
        )
    }
    dype_fields = {"dype_preset": "4k", "dype_scale": 2, "dype_exponent": 2}
    flux_denoise = {
        "type": "flux_denoise",
        "id": ids["flux_denoise"],
        "guidance": 4,
        "num_steps": 30,
        "scheduler": "euler",
        **dype_fields,
        "denoising_start": 0,
        "denoising_end": 1,
        "width": width,
        "height": height,
        **denoise,
    }
    metadata = {
        "id": ids["core_metadata"],
        "type": "core_metadata",
        "guidance": 4,
        "model": FLUX_MODELS["model"],
        "steps": 30,
        "scheduler": "euler",
        "dype_preset": flux_denoise.get("dype_preset"),
        "dype_scale": flux_denoise.get("dype_scale"),
        "dype_exponent": flux_denoise.get("dype_exponent"),
        "vae": FLUX_MODELS["vae_model"],
        "t5_encoder": FLUX_MODELS["t5_encoder_model"],
        "clip_embed_model": FLUX_MODELS["clip_embed_model"],
        "width": width,
        "height": height,
        "generation_mode": "flux_txt2img",
    }
    nodes = [
        {"id": ids["positive_prompt"], "type": "string"},
        {"id": ids["seed"], "type": "integer"},
        {"type": "flux_vae_decode", "id": ids["flux_vae_decode"], "is_intermediate": False},
        {"type": "flux_model_loader", "id": ids["flux_model_loader"], **copy.deepcopy(FLUX_MODELS)},
        {"type": "flux_text_encoder", "id": ids["flux_text_encoder"]},
        flux_denoise,
        {"type": "collect", "id": ids["pos_cond_collect"]},
        metadata,
    ]
    for node in nodes:
        node.setdefault("is_intermediate", True)
        node.setdefault("use_cache", True)
    loader, encoder, denoise_id, l2i = (
        ids["flux_model_loader"],
        ids["flux_text_encoder"],
        ids["flux_denoise"],
        ids["flux_vae_decode"],
    )
    edges = [
        _edge(loader, "clip", encoder, "clip"),
        _edge(loader, "t5_encoder", encoder, "t5_encoder"),
        _edge(loader, "max_seq_len", encoder, "t5_max_seq_len"),
        _edge(loader, "transformer", denoise_id, "transformer"),
        _edge(loader, "vae", denoise_id, "controlnet_vae"),
        _edge(loader, "vae", l2i, "vae"),
        _edge(ids["positive_prompt"], "value", encoder, "prompt"),
        _edge(encoder, "conditioning", ids["pos_cond_collect"], "item"),
        _edge(ids["pos_cond_collect"], "collection", denoise_id, "positive_text_conditioning"),
        _edge(ids["seed"], "value", denoise_id, "seed"),
        _edge(denoise_id, "latents", l2i, "latents"),
        _edge(ids["seed"], "value", ids["core_metadata"], "seed"),
        _edge(ids["positive_prompt"], "value", ids["core_metadata"], "positive_prompt"),
        _edge(ids["core_metadata"], "metadata", l2i, "metadata"),
    ]
    graph = {"id": "flux_graph:dype-test", "nodes": {node["id"]: node for node in nodes}, "edges": edges}
    data = [
        [{"node_path": ids["seed"], "field_name": "value", "items": [seed]}],
        [{"node_path": ids["positive_prompt"], "field_name": "value", "items": [prompt]}],
    ]
    return {
        "batch": {"graph": graph, "runs": 1, "data": data, "origin": "generate", "destination": "gallery"},
        "prepend": False,
    }


def workflow_graph(workflow: dict[str, Any], fill: dict[str, Any] | None = None) -> dict[str, Any]:
    """The graph the workflow editor builds from `workflow`; `fill` gives values to inputs left empty
    (the models a user picks), by input name."""
    fill = fill or {}
    connected = {(edge["target"], edge["targetHandle"]) for edge in workflow["edges"]}
    nodes: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        data = node["data"]
        values: dict[str, Any] = {"id": data["id"], "type": data["type"]}
        for name, field in data["inputs"].items():
            if (data["id"], name) in connected:
                continue
            if "value" in field:
                values[name] = field["value"]
            elif name in fill:
                values[name] = copy.deepcopy(fill[name])
        values["is_intermediate"] = data["isIntermediate"]
        values["use_cache"] = data["useCache"]
        nodes[data["id"]] = values
    edges = [
        _edge(edge["source"], edge["sourceHandle"], edge["target"], edge["targetHandle"]) for edge in workflow["edges"]
    ]
    return {"id": f"workflow:{workflow['name']}", "nodes": nodes, "edges": edges}
