"""The trial processes' heap: freed blocks reused without new page faults, handed back
to the OS between trials."""
from __future__ import annotations

import subprocess
import sys

import pytest

from sweep_service import heap

pytestmark = pytest.mark.skipif(heap._LIBC is None, reason="glibc only")

STEPS = """
import resource, psutil, torch
from sweep_service import heap
if KEEP:
    heap.keep_freed_memory()
torch.set_num_threads(1)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
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
print(new_faults, (held - psutil.Process().memory_info().rss) / 2**20)
"""


def _run(keep: bool) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", f"KEEP = {keep}\n{STEPS}"], capture_output=True, text=True, check=True)
    faults, released = out.stdout.split()
    return int(faults), float(released)


def test_training_steps_reuse_freed_memory_and_release_it_between_trials():
    default_faults, _ = _run(keep=False)
    kept_faults, released_mb = _run(keep=True)
    # an activation of 64 x 64 x 32 x 32 floats is 4 096 pages: 28 000-175 000 faults per 5
    # steps by default, 1-4 098 with the freed blocks kept (at most one faulted in once),
    # and once 12 289 (three: the kernel may reclaim kept pages that sat unused)
    assert default_faults > 20_000
    assert kept_faults <= 4 * 4_097 and kept_faults < default_faults / 4
    assert released_mb > 16  # what the steps kept goes back to the OS
