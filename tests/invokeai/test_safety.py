"""Thread safety, reload safety, and restore on every exit (success, error, cancellation)."""

from __future__ import annotations

import copy
import importlib
import threading

import pytest
import torch
from invokeai.app.invocations import flux_denoise as core_module
from invokeai.app.invocations.baseinvocation import InvocationRegistry
from invokeai.backend.flux.extensions import kontext_extension

import dype.invokeai
from dype.invokeai import dispatch

from .conftest import FakeServices, assert_unpatched, node, record_calls, run, text_conditioning

SIZE = 512


def fresh_services(model: torch.nn.Module) -> FakeServices:
    svc = FakeServices(models={"flux": model})
    svc.conditionings["pos"] = text_conditioning(1)
    return svc


def test_two_generations_in_two_threads(dev_model, dype_class, core_class):
    """Ours with DyPE, and InvokeAI's own class with its built-in DyPE, at the same time on two threads."""
    # One model per thread, as InvokeAI 6.14 has one model cache (and model copy) per GPU/thread.
    ours_model, core_model = copy.deepcopy(dev_model), copy.deepcopy(dev_model)
    jobs = {
        "ours": (ours_model, node(dype_class, width=SIZE, height=SIZE, num_steps=2, dype_preset="manual")),
        "core": (core_model, node(core_class, width=SIZE, height=SIZE, num_steps=2, dype_preset="4k")),
    }
    sequential = {name: run(invocation, fresh_services(model))[0] for name, (model, invocation) in jobs.items()}

    # Both threads wait for each other in their first transformer call: both states are live at once.
    both_inside = threading.Barrier(2, timeout=60)
    first_calls: set[int] = set()

    def meet(module: torch.nn.Module, args: tuple) -> None:
        if id(module) not in first_calls:
            first_calls.add(id(module))
            both_inside.wait()

    hooks = [model.register_forward_pre_hook(meet) for model, _ in jobs.values()]
    results: dict[str, object] = {}

    def work(name: str) -> None:
        model, invocation = jobs[name]
        try:
            with record_calls(model) as calls:
                latents, _ = run(invocation, fresh_services(model))
            results[name] = (latents, calls)
        except BaseException as error:  # surfaced below
            results[name] = error

    threads = [threading.Thread(target=work, args=(name,)) for name in jobs]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for hook in hooks:
            hook.remove()

    for outcome in results.values():
        if isinstance(outcome, BaseException):
            raise outcome
    ours_latents, ours_calls = results["ours"]
    core_latents, core_calls = results["core"]
    assert torch.equal(ours_latents, sequential["ours"]) and torch.equal(core_latents, sequential["core"])
    assert {(c.embedder_module, c.ids_dtype) for c in ours_calls} == {("dype.embed", torch.float32)}
    assert len(ours_calls) == 2
    # InvokeAI's own class in the other thread ran InvokeAI's own DyPE, bf16 ids, N+1 calls: untouched.
    assert {(c.embedder_module, c.ids_dtype) for c in core_calls} == {
        ("invokeai.backend.flux.dype.embed", torch.bfloat16)
    }
    assert len(core_calls) == 3
    assert_unpatched(ours_model)
    assert_unpatched(core_model)


def test_register_is_idempotent():
    wrapped = {name: getattr(core_module, name) for name in ("denoise", "get_schedule", "generate_img_ids")}
    for _ in range(2):
        dype.invokeai.register()
        importlib.reload(dype.invokeai)  # what re-executing the pack's __init__ amounts to
    for name, wrapper in wrapped.items():
        current = getattr(core_module, name)
        assert current is wrapper  # not wrapped a second time
        assert not getattr(current.__wrapped__, dispatch.DISPATCH_MARK, False)
    assert getattr(kontext_extension.generate_img_ids_with_offset, dispatch.DISPATCH_MARK)
    classes = [c for c in InvocationRegistry._invocation_classes if c.get_type() == "flux_denoise"]
    assert classes == [dype.invokeai.FluxDenoiseInvocation]


def test_register_takes_flux_denoise_back(core_class, dype_class):
    InvocationRegistry.register_invocation(core_class)  # e.g. another pack put the core class back
    try:
        assert InvocationRegistry.get_invocation_for_type("flux_denoise") is core_class
    finally:
        dype.invokeai.register()
    assert InvocationRegistry.get_invocation_for_type("flux_denoise") is dype_class


@pytest.mark.parametrize("where", ["step_callback", "transformer"])
def test_restored_after_an_exception_inside_denoise(where, services, dev_model, dype_class):
    """An error or a cancellation (InvokeAI cancels by raising from the step callback) restores everything."""
    ctx = services.context()
    hook = None
    if where == "step_callback":
        ctx.util.flux_step_callback.side_effect = RuntimeError("canceled")
    else:

        def fail(module, args, kwargs):
            raise RuntimeError("canceled")

        hook = dev_model.register_forward_pre_hook(fail, with_kwargs=True)
    invocation = node(dype_class, width=SIZE, height=SIZE, num_steps=2, dype_preset="manual")
    try:
        with pytest.raises(RuntimeError, match="canceled"):
            run(invocation, services, ctx)
    finally:
        if hook is not None:
            hook.remove()
    assert_unpatched(dev_model)
    assert dispatch.current_state() is None
    # …and the next generation on this thread is plain InvokeAI again.
    with record_calls(dev_model) as calls:
        run(node(dype_class, width=256, height=256, num_steps=1), services)
    assert [c.embedder for c in calls] == ["EmbedND"]
