"""The TF32 switch against every way a caller may have set fp32 precision before (both torch APIs):
inside, every precision getter that worked still works and reports the switch's choice; after, the
caller's settings are back exactly."""
from __future__ import annotations

import subprocess
import sys

import pytest

PRIORS = {
    "untouched": "",
    "set_float32_matmul_precision high": "torch.set_float32_matmul_precision('high')",
    "set_float32_matmul_precision highest": "torch.set_float32_matmul_precision('highest')",
    "legacy allow_tf32 on": "torch.backends.cuda.matmul.allow_tf32 = True",
    "legacy cudnn allow_tf32 off": "torch.backends.cudnn.allow_tf32 = False",
    "per-backend matmul tf32": "torch.backends.cuda.matmul.fp32_precision = 'tf32'",
    "per-backend matmul ieee": "torch.backends.cuda.matmul.fp32_precision = 'ieee'",
    "per-backend conv ieee": "torch.backends.cudnn.conv.fp32_precision = 'ieee'",
}

# Each case runs in a fresh interpreter: torch's precision state is process-global and not fully
# restorable from Python once both APIs have touched it, so cases must not share a process.
PROBE = """
import warnings
import torch
from gedi_fast.precision import tf32_state, tf32_switches
GETTERS = {{
    "get_float32_matmul_precision": torch.get_float32_matmul_precision,
    "matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
    "cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
}}
def read():
    values = {{}}
    for name, getter in GETTERS.items():
        try:
            values[name] = getter()
        except RuntimeError:
            values[name] = "raises"
    return values, tf32_state()
{prior}
before, before_state = read()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with tf32_switches({enabled}):
        inside, inside_state = read()
after, after_state = read()
assert after == before, (before, after)
if before_state[0] is None:  # configured through the per-backend API: left alone, with a warning
    assert inside_state == before_state and len(caught) == 1, (before_state, inside_state, caught)
else:
    assert not caught, caught
    assert inside_state[0] == ({matmul!r}, {enabled}), inside_state
    assert after_state[0] == before_state[0], (before_state, after_state)
    for name, value in before.items():
        assert value == "raises" or inside[name] != "raises", (name, before, inside)
print("ok")
"""


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_tf32_switch_under_every_prior_setting(prior, enabled):
    code = PROBE.format(prior=PRIORS[prior], enabled=enabled, mode="tf32" if enabled else "ieee",
                        matmul="high" if enabled else "highest")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_switch_leaves_inductors_getter_working_after_a_user_choice():
    """The reported defect: set_float32_matmul_precision('high'), then the trainer's tf32=False."""
    code = ("import torch\nfrom gedi_fast.precision import tf32_switches\n"
            "torch.set_float32_matmul_precision('high')\n"
            "with tf32_switches(False):\n    inside = torch.get_float32_matmul_precision()\n"
            "print(inside, torch.get_float32_matmul_precision())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["highest", "high"], result.stderr[-2000:]
