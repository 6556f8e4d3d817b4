"""A few hundred fuzz cases per target in CI (`flightllm fuzz TARGET -n 10000` runs the full campaign)."""
import json

import pytest

from conftest import run_cli
from flightllm import fuzz


@pytest.mark.parametrize("target,cases", [("gguf", 400), ("hf", 400), ("isa", 600)])
def test_fuzz_campaign_is_clean(target, cases):
    r = fuzz.run(target, cases, seed=11)
    assert r.cases == cases
    assert r.clean, r.examples
    assert r.rejected > 0 and r.accepted > 0          # the mutations reach both outcomes


def test_fuzz_cli_json():
    r = run_cli("fuzz", "isa", "-n", "50", "--seed", "3", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["cases"] == 50 and out["crashes"] == 0 and out["hangs"] == 0 and out["out_of_region_writes"] == 0
