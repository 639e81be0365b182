"""InvokeAI's real server with the pack installed the way InvokeAI users install node packs.

`invokeai-web`'s own `run_app()` runs in a child process on 127.0.0.1 (a free port, a temporary root, no
models, nothing downloaded), stopped at the end. The pack goes in through the Nodes tab's API: "install
from a git URL", with a local git repository of this working tree as the URL (offline); the clone's
folder is `dype`, the package's own name. Then, over HTTP only: the schema, the Linear UI's exact
`flux_denoise` batch through the queue API (and 422 for bad values), the node count, reload, the
imported workflows, uninstall (InvokeAI's nodes back without a restart) and a second install in the same process.

The child imports torchvision through the tests' fix (loaded by file path: importing the `dype` package
there would load a second copy before the clone's, which the pack refuses). If git is missing, a stand-in
`git` that copies a local folder takes its place for InvokeAI's `git clone`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dype.cli.invokeai import packaged_workflows

from .clone import REPO, fake_git, make_git_source
from .graphs import FLUX_MODELS, linear_ui_flux_batch, workflow_graph

LAUNCHER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("tests_torchvision_fix", sys.argv[1])
fix = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fix)
fix.import_torchvision()
from invokeai.app.run_app import run_app
sys.argv = ["invokeai-web", "--root", sys.argv[2]]
run_app()
"""
START_TIMEOUT_S = 120
PACK = "dype"
PACK_TYPES = ["flux2_denoise", "flux_denoise", "flux_denoise_meta", "flux_vae_decode_tiled", "z_image_denoise"]
QUEUE = "/api/v1/queue/default"


@dataclass
class Server:
    base: str
    root: Path
    log: Path
    process: subprocess.Popen
    source: Path
    install: dict[str, Any]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, never a proxy
        try:
            with opener.open(request, timeout=120) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def schema(self) -> dict[str, Any]:
        status, schema = self.call("GET", "/openapi.json")
        assert status == 200
        return schema["components"]["schemas"]

    def packs(self) -> dict[str, list[str]]:
        status, listing = self.call("GET", "/api/v2/custom_nodes/")
        assert status == 200, listing
        return {pack["name"]: sorted(pack["node_types"]) for pack in listing["node_packs"]}

    def enqueue(self, body: dict[str, Any]) -> tuple[int, Any]:
        return self.call("POST", f"{QUEUE}/enqueue_batch", body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # what Ctrl+C does: InvokeAI's own shutdown
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:  # 6.14.2 lingers on an idle AnyIO worker thread; the root is temporary
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("live")
    root = tmp / "invokeai root"
    root.mkdir()
    port = free_port()
    (root / "invokeai.yaml").write_text(f"schema_version: 4.0.2\nhost: 127.0.0.1\nport: {port}\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("INVOKEAI_") and k != "PYTHONPATH"}
    if (stand_in := fake_git(tmp / "bin", sys.executable)) is not None:
        env["PATH"] = f"{stand_in}{os.pathsep}{env.get('PATH', '')}"
    log = tmp / "server.log"
    fix = REPO / "src" / "dype" / "_torchvision_compat.py"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(fix), str(root)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
        )
    live = Server(f"http://127.0.0.1:{port}", root, log, process, tmp / "git source" / PACK, install={})
    try:
        source = make_git_source(live.source)  # while the server starts
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"invokeai-web exited:\n{live.log_text()[-4000:]}"
            assert time.monotonic() < deadline, f"invokeai-web not up after {START_TIMEOUT_S} s:\n{live.log_text()}"
            try:
                if live.call("GET", "/api/v1/app/version")[0] == 200:
                    break
            except OSError:
                time.sleep(0.25)
        assert live.packs() == {}
        status, live.install = live.call("POST", "/api/v2/custom_nodes/install", {"source": str(source)})
        assert status == 200, live.install
        yield live
    finally:
        stop(process)


def test_git_url_install_loads_the_pack_and_imports_its_workflows(server):
    response = server.install
    assert response["success"] and response["name"] == PACK, response["message"]
    assert response["workflows_imported"] == len(packaged_workflows()) == 3
    # InvokeAI notes the pyproject.toml (it installs nothing): no pip step is needed, docs/invokeai.md says so
    assert (response["requires_dependencies"], response["dependency_file"]) == (True, "pyproject.toml")
    assert (server.root / "nodes" / PACK / "src" / "dype" / "invokeai" / "__init__.py").is_file()
    assert server.packs() == {PACK: PACK_TYPES}  # the Nodes tab's count: 5 nodes, not 0

    status, listing = server.call("GET", "/api/v1/workflows/?categories=user&per_page=50")
    assert status == 200
    names = {item["name"] for item in listing["items"]}
    assert names == {json.loads(p.read_text())["name"] for p in packaged_workflows()}
    for _ in range(2):  # Nodes tab ▸ Custom Nodes ▸ Reload re-executes nodes/dype/__init__.py as `dype`
        status, result = server.call("POST", "/api/v2/custom_nodes/reload")
        assert status == 200 and result == {"status": "Custom nodes reloaded successfully."}
        assert server.packs() == {PACK: PACK_TYPES}
    log = server.log_text()
    assert log.count('Overriding core node "flux_denoise" with node from "dype"') == 1  # registered once
    assert "Failed to load node pack" not in log


def test_openapi_has_the_override(server):
    schemas = server.schema()
    denoise = schemas["FluxDenoiseInvocation"]
    assert (denoise["version"], denoise["title"], denoise["node_pack"]) == ("4.7.0", "FLUX Denoise", PACK)
    assert denoise["properties"]["dype_method"]["enum"] == ["vision_yarn", "yarn", "ntk", "base"]
    assert denoise["properties"]["dype_shift"]["enum"] == ["official", "stock"]
    assert schemas["FluxDenoiseLatentsMetaInvocation"]["version"] == "1.1.0"
    assert "dype_method" in schemas["FluxDenoiseLatentsMetaInvocation"]["properties"]
    assert schemas["FluxVaeDecodeTiledInvocation"]["properties"]["tile_size"]["default"] == 1024
    for name, title, extra in (("Flux2DenoiseInvocation", "FLUX2 Denoise", set()),
                               ("ZImageDenoiseInvocation", "Denoise - Z-Image", {"dype_shift"})):  # fmt: skip
        node = schemas[name]
        assert (node["version"], node["title"], node["node_pack"]) == ("1.7.0", title, PACK)
        fields = {"dype_preset", "dype_scale", "dype_exponent", "dype_method", "dype_base_resolution"}
        assert fields | {"dype_isotropic"} | extra <= set(node["properties"])
        assert node["properties"]["dype_preset"]["default"] == "auto"  # what the Linear UI, sending none, gets


def test_linear_ui_batch_is_accepted_and_bad_values_get_422(server):
    status, _ = server.call("PUT", f"{QUEUE}/processor/pause")  # queue, do not run: there are no models
    assert status == 200
    for preset in ("off", "auto", "area", "4k", "manual"):
        status, result = server.enqueue(linear_ui_flux_batch(dype_preset=preset))
        assert status == 200 and result["enqueued"] == 1, result
    for field, bad in (("dype_preset", "on"), ("dype_scale", 9), ("dype_method", "longrope")):
        status, result = server.enqueue(linear_ui_flux_batch(**{field: bad}))
        assert status == 422 and field in json.dumps(result), (field, result)
    for path in packaged_workflows():  # each shipped workflow, as the editor enqueues it
        workflow = json.loads(path.read_text())
        body = {"batch": {"graph": workflow_graph(workflow, fill=FLUX_MODELS), "runs": 1}, "prepend": False}
        status, result = server.enqueue(body)
        assert status == 200 and result["enqueued"] == 1, (path.name, result)
    assert server.call("GET", "/api/v1/app/version")[0] == 200  # the server is still up


def test_uninstall_from_the_nodes_tab_gives_invokeai_its_nodes_back_without_a_restart(server):
    status, result = server.call("DELETE", f"/api/v2/custom_nodes/{PACK}")
    assert status == 200 and result["success"], result
    assert "Removed 3 workflow(s)" in result["message"]
    assert server.packs() == {}
    schemas = server.schema()
    assert schemas["FluxDenoiseInvocation"]["version"] == "4.6.0"  # InvokeAI's own node again
    assert "dype_method" not in schemas["FluxDenoiseInvocation"]["properties"]
    assert schemas["FluxDenoiseLatentsMetaInvocation"]["version"] == "1.0.1"
    assert schemas["Flux2DenoiseInvocation"]["version"] == "1.6.0"
    assert "dype_preset" not in schemas["Flux2DenoiseInvocation"]["properties"]
    assert schemas["ZImageDenoiseInvocation"]["version"] == "1.6.0"
    assert "FluxVaeDecodeTiledInvocation" not in schemas
    status, result = server.enqueue(linear_ui_flux_batch())  # the Linear UI works on InvokeAI's node
    assert status == 200, result
    # a saved workflow with our fields: the server drops them without a word (docs/invokeai.md)
    status, result = server.enqueue(linear_ui_flux_batch(dype_method="yarn", dype_shift="stock"))
    assert status == 200, result

    status, again = server.call("POST", "/api/v2/custom_nodes/install", {"source": str(server.source)})
    assert status == 200 and again["success"], again  # the purged package imports afresh
    assert server.packs() == {PACK: PACK_TYPES}
    assert "Failed to load node pack" not in server.log_text()
