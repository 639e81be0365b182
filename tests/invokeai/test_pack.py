"""The pack in InvokeAI's Nodes tab, in-process: counted, reloaded, uninstalled, one copy at a time.

Real parts: InvokeAI 6.14.2's loader (`load_custom_nodes`), its custom-nodes routes (list, reload,
uninstall: the functions FastAPI calls), its registry and type adapter; the pack folder is what
`dype invokeai install` writes. `test_live_app.py` runs the same through the real server and a git clone.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from invokeai.app.api.routers import custom_nodes as router
from invokeai.app.invocations.baseinvocation import InvocationRegistry
from invokeai.app.invocations.flux2_denoise import Flux2DenoiseInvocation as CoreFlux2Denoise
from invokeai.app.invocations.flux_denoise import FluxDenoiseInvocation as CoreFluxDenoise
from invokeai.app.invocations.load_custom_nodes import load_custom_nodes
from invokeai.app.invocations.metadata_linked import FluxDenoiseLatentsMetaInvocation as CoreFluxDenoiseMeta
from invokeai.app.invocations.z_image_denoise import ZImageDenoiseInvocation as CoreZImageDenoise
from invokeai.app.services.config.config_default import get_config

import dype.invokeai
from dype.cli import invokeai as cli
from dype.invokeai import PACK_NODES, dispatch, registration
from dype.invokeai.flux_denoise_meta import FluxDenoiseLatentsMetaInvocation
from dype.invokeai.tiled_decode import FluxVaeDecodeTiledInvocation

from .conftest import node, record_calls, run

PACK_TYPES = ["flux2_denoise", "flux_denoise", "flux_denoise_meta", "flux_vae_decode_tiled", "z_image_denoise"]
REPO = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("test_pack")


@pytest.fixture
def nodes_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An InvokeAI root whose custom nodes folder InvokeAI's routes use; every pack let go afterwards."""
    (tmp_path / "invokeai.yaml").write_text("schema_version: 4.0.2\n")
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    monkeypatch.setattr(get_config(), "custom_nodes_dir", nodes)
    try:
        yield nodes
    finally:
        for pack in list(nodes.iterdir()):
            InvocationRegistry.unregister_pack(pack.name)
            router._purge_pack_modules(pack.name)
        InvocationRegistry.unregister_pack("other_pack")
        dype.invokeai.register()  # back to a plain import's state: our nodes, node_pack "dype", no owner


def registered(node_type: str) -> type | None:
    return InvocationRegistry.get_invocation_for_type(node_type)


def listed_packs() -> dict[str, list[str]]:
    """What the Nodes tab lists: pack name → its node types (InvokeAI's own list route)."""
    response = router.list_custom_node_packs(current_admin=None)
    return {pack.name: sorted(pack.node_types) for pack in response.node_packs}


def minimal_node(node_type: str = "flux_denoise", **fields: object) -> dict[str, object]:
    return {
        "type": node_type,
        "id": "n1",
        "transformer": {
            "transformer": {"key": "k", "hash": "h", "name": "flux", "base": "flux", "type": "main"},
            "loras": [],
        },
        "positive_text_conditioning": {"conditioning_name": "pos"},
        **fields,
    }


def test_pack_nodes_list_knows_each_core_class():
    table = {entry.type: (entry.node, entry.core) for entry in PACK_NODES}
    assert table == {
        "flux_denoise": (dype.invokeai.FluxDenoiseInvocation, CoreFluxDenoise),
        "flux_denoise_meta": (FluxDenoiseLatentsMetaInvocation, CoreFluxDenoiseMeta),
        "flux2_denoise": (dype.invokeai.Flux2DenoiseInvocation, CoreFlux2Denoise),
        "z_image_denoise": (dype.invokeai.ZImageDenoiseInvocation, CoreZImageDenoise),
        "flux_vae_decode_tiled": (FluxVaeDecodeTiledInvocation, None),
    }
    for entry in PACK_NODES:
        if entry.core is None:
            continue
        assert issubclass(entry.node, entry.core)
        assert entry.node.UIConfig.title == entry.core.UIConfig.title
        assert set(entry.core.model_fields) <= set(entry.node.model_fields)
        ours, core = (tuple(int(p) for p in c.UIConfig.version.split(".")) for c in (entry.node, entry.core))
        assert ours[0] == core[0] and ours[1] > core[1]  # a minor bump: saved workflows still load


def test_nodes_tab_counts_the_pack_and_uninstall_gives_invokeai_its_nodes_back(nodes_folder, caplog):
    """Today's code: "0 NODES", and after Uninstall no `flux_denoise` at all until a restart."""
    root = nodes_folder.parent
    cli.install_pack(root)
    (nodes_folder / "some_other_pack").mkdir()  # a pack that is not ours, to be listed with 0 nodes
    (nodes_folder / "some_other_pack" / "__init__.py").write_text("")
    InvocationRegistry.register_invocation(CoreFluxDenoise)  # a fresh server: the core nodes are registered
    InvocationRegistry.register_invocation(CoreFluxDenoiseMeta)
    InvocationRegistry.register_invocation(CoreFlux2Denoise)
    InvocationRegistry.register_invocation(CoreZImageDenoise)
    InvocationRegistry.unregister_pack("dype")

    load_custom_nodes(nodes_folder, LOG)  # startup
    assert listed_packs() == {cli.PACK_NAME: PACK_TYPES, "some_other_pack": []}
    assert registered("flux_denoise") is dype.invokeai.FluxDenoiseInvocation
    assert registered("flux_denoise_meta") is FluxDenoiseLatentsMetaInvocation

    for _ in range(2):  # Nodes tab ▸ Custom Nodes ▸ Reload re-executes every pack's __init__.py
        assert router.reload_custom_nodes(current_admin=None)["status"] == "Custom nodes reloaded successfully."
        assert listed_packs()[cli.PACK_NAME] == PACK_TYPES
    assert [c for c in InvocationRegistry._invocation_classes if c.get_type() == "flux_denoise"] == [
        dype.invokeai.FluxDenoiseInvocation
    ]

    response = router.uninstall_custom_node_pack(current_admin=None, pack_name=cli.PACK_NAME)
    assert response.success, response.message
    assert not (nodes_folder / cli.PACK_NAME).exists() and cli.PACK_NAME not in sys.modules
    assert registered("flux_denoise") is CoreFluxDenoise  # without a restart
    assert registered("flux_denoise_meta") is CoreFluxDenoiseMeta
    assert registered("flux2_denoise") is CoreFlux2Denoise and registered("z_image_denoise") is CoreZImageDenoise
    assert registered("flux_vae_decode_tiled") is None
    assert cli.PACK_NAME not in listed_packs()
    adapter = InvocationRegistry.get_invocation_typeadapter()
    assert type(adapter.validate_python(minimal_node(dype_preset="4k", dype_scale=2))) is CoreFluxDenoise
    saved = adapter.validate_python(minimal_node(dype_method="yarn", dype_shift="stock"))  # a saved workflow
    assert type(saved) is CoreFluxDenoise and "dype_method" not in saved.model_dump()  # dropped silently
    assert "Failed to load node pack" not in caplog.text


def test_a_second_copy_is_refused_and_takes_over_after_the_first_is_uninstalled(nodes_folder, caplog):
    root = nodes_folder.parent
    first = cli.install_pack(root)
    second = nodes_folder / "other_pack"  # e.g. a git clone next to `dype invokeai install`
    second.mkdir()
    (second / "__init__.py").write_text((first / "__init__.py").read_text())

    with caplog.at_level(logging.ERROR):
        load_custom_nodes(nodes_folder, LOG)
    packs = listed_packs()
    owner, refused = (cli.PACK_NAME, "other_pack") if packs[cli.PACK_NAME] else ("other_pack", cli.PACK_NAME)
    assert packs == {owner: PACK_TYPES, refused: []}  # one wins, never two overrides
    assert f"Failed to load node pack {refused}" in caplog.text
    assert "PackConflictError" in caplog.text and f"'{owner}'" in caplog.text and f"'{refused}'" in caplog.text

    assert router.uninstall_custom_node_pack(current_admin=None, pack_name=owner).success
    assert registered("flux_denoise") is CoreFluxDenoise
    router.reload_custom_nodes(current_admin=None)  # the refused copy loads now
    assert listed_packs() == {refused: PACK_TYPES}
    assert registered("flux_denoise") is dype.invokeai.FluxDenoiseInvocation


def test_a_pack_deleted_by_hand_does_not_block_the_next_one(nodes_folder):
    root = nodes_folder.parent
    first = cli.install_pack(root)
    load_custom_nodes(nodes_folder, LOG)
    text = (first / "__init__.py").read_text()
    cli.uninstall_pack(root)  # files gone, nodes still registered (no Nodes tab involved)
    (nodes_folder / "other_pack").mkdir()
    (nodes_folder / "other_pack" / "__init__.py").write_text(text)
    router.reload_custom_nodes(current_admin=None)
    assert listed_packs() == {"other_pack": PACK_TYPES}


def load_copy(module: object, name: str) -> object:
    """A second instance of one of our modules, as after InvokeAI purged and re-imported the package."""
    spec = importlib.util.spec_from_file_location(name, module.__file__)
    copy = importlib.util.module_from_spec(spec)
    sys.modules[name] = copy  # dataclasses look their module up while the class is built
    spec.loader.exec_module(copy)
    return copy


def test_a_fresh_import_takes_over_stale_wrappers(services, dev_model, dype_class):
    """Uninstalling a clone named `dype` purges this package; the reinstall imports it afresh. The first
    import's dispatch wrappers and registry hook must then give way, or dype's DyPE silently stays off."""
    from invokeai.app.invocations import flux_denoise as core_module

    stale_dispatch = load_copy(dispatch, "stale_dype_dispatch")
    stale_registration = load_copy(registration, "stale_dype_registration")
    wrappers = stale_dispatch._WRAPPERS[dispatch.FLUX_DENOISE_MODULE]
    originals = {name: getattr(core_module, name).__wrapped__ for name in wrappers}
    try:
        for name, original in originals.items():  # the stale module's wrappers, as its install() left them
            setattr(core_module, name, wrappers[name](original))
        stale_registration._install_unregister_hook()
        with record_calls(dev_model) as calls:
            run(node(dype_class, width=512, height=512, num_steps=1, dype_preset="manual"), services)
        # stale wrappers pass every call through: InvokeAI's built-in DyPE runs, not dype's
        assert {c.embedder_module for c in calls} == {"invokeai.backend.flux.dype.embed"}

        dype.invokeai.register()
        for name, original in originals.items():
            current = getattr(core_module, name)
            assert current.__globals__ is vars(dispatch) and current.__wrapped__ is original  # one layer, ours
        hook = InvocationRegistry.__dict__["unregister_pack"].__func__
        assert hook.__globals__ is vars(registration)
        assert not getattr(hook.__wrapped__, registration.HOOK_MARK, False)
        with record_calls(dev_model) as calls:
            run(node(dype_class, width=512, height=512, num_steps=1, dype_preset="manual"), services)
        assert {c.embedder_module for c in calls} == {"dype.embed"}
    finally:
        for name, original in originals.items():
            setattr(core_module, name, original)
        dype.invokeai.register()
        sys.modules.pop("stale_dype_dispatch", None)
        sys.modules.pop("stale_dype_registration", None)


def test_version_outside_the_supported_range_warns(caplog):
    logger = logging.getLogger("test_pack.version")
    with caplog.at_level(logging.WARNING, logger="test_pack.version"):
        assert registration.check_invokeai_version("6.14.2", logger)
        assert registration.check_invokeai_version("6.14.0rc1", logger)
        assert caplog.text == ""
        for version in ("6.15.0", "6.13.9", "7.0.0", "main"):
            assert not registration.check_invokeai_version(version, logger)
    assert caplog.text.count("supports InvokeAI >=6.14,<6.15") == 4 and "this is InvokeAI 6.15.0" in caplog.text


def test_declared_invokeai_range_is_the_checked_one():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["invokeai"] == [f"invokeai{registration.SUPPORTED_INVOKEAI}"]
    assert cli.SUPPORTED_INVOKEAI == registration.SUPPORTED_INVOKEAI
    assert "invokeai==6.14.2" in (REPO / "scripts" / "setup.sh").read_text()  # the tests still get 6.14.2
