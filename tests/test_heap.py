"""The trial processes' heap: on tcmalloc where the machine has it, freed blocks reused
without new page faults, handed back to the OS between trials."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sweep_service.worker import heap

pytestmark = pytest.mark.skipif(heap._LIBC is None, reason="glibc only")

STEPS = """
import resource, psutil, torch
from sweep_service.worker import heap
if KEEP:
    heap.keep_freed_memory()
torch.set_num_threads(1)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(64, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

def step():
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

for _ in range(3):
    step()
before = faults()
for _ in range(5):
    step()
new_faults = faults() - before
held = psutil.Process().memory_info().rss
del model, optimizer, x, y
heap.release()
print(heap.allocator(), new_faults, (held - psutil.Process().memory_info().rss) / 2**20)
"""


def _run(keep: bool, env: dict[str, str] | None = None) -> tuple[str, int, float]:
    environ = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | (env or {})
    out = subprocess.run([sys.executable, "-c", f"KEEP = {keep}\n{STEPS}"], capture_output=True, text=True, check=True,
                         env=environ)
    allocator, faults, released = out.stdout.split()
    return allocator, int(faults), float(released)


def test_training_steps_reuse_freed_memory_and_release_it_between_trials():
    allocator, default_faults, _ = _run(keep=False)
    assert allocator == "glibc"
    _, kept_faults, released_mb = _run(keep=True)
    # an activation of 64 x 64 x 32 x 32 floats is 4 096 pages: 28 000-175 000 faults per 5
    # steps by default, 1-4 098 with the freed blocks kept (at most one faulted in once),
    # and once 12 289 (three: the kernel may reclaim kept pages that sat unused)
    assert default_faults > 20_000
    assert kept_faults <= 4 * 4_097 and kept_faults < default_faults / 4
    assert released_mb > 16  # what the steps kept goes back to the OS


@pytest.mark.skipif(not heap.allocator_env({}), reason="tcmalloc is not installed (scripts/setup.sh installs it)")
def test_processes_started_with_the_allocator_env_run_on_tcmalloc_and_keep_then_release_memory():
    env = heap.allocator_env({})
    assert env["TCMALLOC_RELEASE_RATE"] == "0"
    allocator, faults, released_mb = _run(keep=True, env=env)
    assert allocator == "tcmalloc"
    assert faults <= 4 * 4_097  # as glibc's kept heap, above
    assert released_mb > 16


def test_a_preload_the_user_chose_is_left_alone():
    assert heap.allocator_env({"LD_PRELOAD": "libjemalloc.so.2"}) == {}
