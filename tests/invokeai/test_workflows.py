"""The example workflows the pack ships: valid for InvokeAI, real nodes and fields, found by the installer.

Real parts: InvokeAI 6.14.2's workflow model (`WorkflowWithoutIDValidator`), its Nodes-tab import
(`_import_workflows_from_pack`, with a recording stand-in for the workflow-records service, the one
service that needs InvokeAI's database), its invocation registry and its `Graph` validation, which
checks every edge's types. `test_live_app.py` imports them into a real server's library.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from invokeai.app.api.dependencies import ApiDependencies
from invokeai.app.api.routers import custom_nodes as router
from invokeai.app.invocations.baseinvocation import InvocationRegistry
from invokeai.app.services.shared.graph import Graph
from invokeai.app.services.workflow_records.workflow_records_common import WorkflowWithoutIDValidator

import dype.invokeai
from dype.cli.invokeai import packaged_workflows

from .clone import REPO, clone_files, copy_tree
from .graphs import FLUX_MODELS, workflow_graph

NOT_INPUTS = {"id", "type", "is_intermediate", "use_cache"}
WORKFLOWS = packaged_workflows()


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_workflows_ship_in_the_package_and_in_a_clone():
    assert [p.name for p in WORKFLOWS] == [
        "flux1-3840x2160-dype-tiled.json",
        "flux2-klein-2048-dype.json",
        "z-image-3840x2160-dype-tiled.json",
    ]
    assert all(p.is_relative_to(REPO / "src" / "dype" / "invokeai" / "workflows") for p in WORKFLOWS)
    # the Nodes-tab installer imports every *.json with "nodes" and "edges" anywhere in the clone
    in_clone = [REPO / name for name in clone_files() if name.suffix == ".json"]
    assert sorted(p for p in in_clone if {"nodes", "edges"} <= set(load(p))) == WORKFLOWS


def test_the_nodes_tab_imports_them(tmp_path, monkeypatch):
    created: list[Any] = []

    def create(workflow: Any, user_id: str, is_public: bool) -> SimpleNamespace:
        created.append((workflow, user_id, is_public))
        return SimpleNamespace(workflow_id=f"wf-{len(created)}")

    services = SimpleNamespace(workflow_records=SimpleNamespace(create=create))
    monkeypatch.setattr(ApiDependencies, "invoker", SimpleNamespace(services=services), raising=False)
    clone = copy_tree(tmp_path / "dype")  # the installer scans the whole clone
    ids = router._import_workflows_from_pack(clone, "dype", owner_user_id="admin")
    assert ids == [f"wf-{i + 1}" for i in range(len(WORKFLOWS))]
    names = sorted(workflow.name for workflow, _, _ in created)
    assert names == sorted(load(p)["name"] for p in WORKFLOWS)
    assert all("node-pack:dype" in workflow.tags and public for workflow, _, public in created)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_uses_real_nodes_fields_and_values(path):
    workflow = load(path)
    WorkflowWithoutIDValidator.validate_python(workflow)
    assert workflow["meta"] == {"version": "3.0.0", "category": "user"}

    nodes = {node["id"]: node["data"] for node in workflow["nodes"]}
    for node_id, data in nodes.items():
        cls = InvocationRegistry.get_invocation_for_type(data["type"])
        assert cls is not None, f"{path.name}: node {node_id} has unknown type {data['type']}"
        assert data["id"] == node_id and data["version"] == cls.UIConfig.version, (node_id, data["version"])
        inputs = set(cls.model_fields) - NOT_INPUTS
        assert set(data["inputs"]) <= inputs, set(data["inputs"]) - inputs
        assert all(field["name"] == name for name, field in data["inputs"].items())
    for edge in workflow["edges"]:
        source = InvocationRegistry.get_invocation_for_type(nodes[edge["source"]]["type"])
        target = InvocationRegistry.get_invocation_for_type(nodes[edge["target"]]["type"])
        assert edge["sourceHandle"] in source.get_output_annotation().model_fields, edge
        assert edge["targetHandle"] in target.model_fields, edge
    for exposed in workflow["exposedFields"]:
        assert exposed["fieldName"] in nodes[exposed["nodeId"]]["inputs"], exposed

    # What the editor enqueues, once the user picked the models: every value and edge type checks out.
    graph = Graph.model_validate(workflow_graph(workflow, fill=FLUX_MODELS))
    graph.validate_self()


@pytest.mark.parametrize(
    ("name", "denoise_type", "decode_type", "size", "preset"),
    [
        ("flux2-klein-2048-dype.json", "flux2_denoise", "flux2_vae_decode", (2048, 2048), "4k"),
        ("z-image-3840x2160-dype-tiled.json", "z_image_denoise", "flux_vae_decode_tiled", (3840, 2160), "auto"),
    ],
)
def test_the_new_family_workflows_are_what_they_say(name, denoise_type, decode_type, size, preset):
    workflow = load(next(p for p in WORKFLOWS if p.name == name))
    graph = Graph.model_validate(workflow_graph(workflow, fill=FLUX_MODELS))
    (denoise,) = [n for n in graph.nodes.values() if n.get_type() == denoise_type]
    (decode,) = [n for n in graph.nodes.values() if n.get_type() == decode_type]
    assert type(denoise).__module__.startswith("dype.invokeai.")
    assert ((denoise.width, denoise.height), denoise.dype_preset) == (size, preset)
    assert any(e.source.node_id == denoise.id and e.destination.node_id == decode.id for e in graph.edges)
    assert denoise.resolve_dype_config() is not None  # DyPE is on at this size
    assert not decode.is_intermediate  # the image lands in the gallery


def test_the_flux1_4k_workflow_is_what_it_says():
    workflow = load(WORKFLOWS[0])
    graph = Graph.model_validate(workflow_graph(workflow, fill=FLUX_MODELS))
    (denoise,) = [n for n in graph.nodes.values() if n.get_type() == "flux_denoise"]
    (decode,) = [n for n in graph.nodes.values() if n.get_type() == "flux_vae_decode_tiled"]
    assert type(denoise) is dype.invokeai.FluxDenoiseInvocation
    assert (denoise.width, denoise.height, denoise.dype_preset) == (3840, 2160, "4k")
    assert (decode.tile_size, decode.overlap, decode.is_intermediate) == (1024, 64, False)
    assert any(
        e.source.node_id == denoise.id and e.destination.node_id == decode.id and e.destination.field == "latents"
        for e in graph.edges
    )
    assert denoise.resolve_dype_config() is not None  # DyPE is on at this size
