"""FLUX.1 is unchanged, bit for bit: every frozen case of `flux1_snapshot.json` (made on bea57c5) still holds."""

from __future__ import annotations

import json

import pytest

from tests.core.flux1_snapshot import PLAN_COMMANDS, SNAPSHOT, case_key, cases, compute, plan_text

FROZEN = json.loads(SNAPSHOT.read_text())
CASES = cases()


def test_the_snapshot_covers_every_case() -> None:
    assert len(CASES) == 588 and len({case_key(case) for case in CASES}) == len(CASES)
    assert {case_key(case) for case in CASES} | {f"plan: {' '.join(a)}" for a in PLAN_COMMANDS} == set(FROZEN)


@pytest.mark.parametrize("layout", ["bfl", "diffusers"])
def test_embedder_outputs_are_bit_identical(layout: str) -> None:
    changed = []
    for case in (case for case in CASES if case["layout"] == layout):
        sha, samples = compute(case)
        frozen = FROZEN[case_key(case)]
        if sha != frozen["sha256"]:
            changed.append((case_key(case), samples, frozen["samples"]))
    assert not changed, f"{len(changed)} cases changed, first: {changed[:3]}"


@pytest.mark.parametrize("argv", PLAN_COMMANDS, ids=lambda argv: " ".join(argv))
def test_plan_table_is_unchanged(argv: tuple[str, ...]) -> None:
    assert plan_text(argv) == FROZEN[f"plan: {' '.join(argv)}"]["text"]
