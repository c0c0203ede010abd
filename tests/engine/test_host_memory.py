"""Host memory on CPU: glibc keeps freed memory, so a training step's large blocks are not mapped and zeroed anew."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dialsum import pipeline
from dialsum.engine import host_memory

glibc = pytest.mark.skipif(not host_memory.supported(), reason="glibc only")

CYCLE = """
import resource, sys, torch
from dialsum.engine import host_memory
if sys.argv[1] == "keep":
    assert host_memory.keep_freed_memory()
block = 16 * 2**20  # 64 MiB of float32: above glibc's largest mmap threshold
for _ in range(8):  # warm-up, like a run's first steps: glibc grows its heap to the working size
    torch.empty(block).fill_(1.0)
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(block).fill_(1.0)  # allocated, touched and freed, like a step's logits
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CYCLE, mode], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


@glibc
def test_freed_blocks_are_reused_instead_of_mapped_again():
    pages = 10 * 64 * 2**20 // 4096
    default, kept = _faults("default"), _faults("keep")
    assert default > pages // 2, default  # glibc's default maps and zeroes every 64 MiB block again
    assert kept <= pages // 5, (kept, default)  # kept: the freed block is reused (at most 2 blocks mapped anew)


def test_applied_only_for_cpu_runs_with_the_setting_on(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    assert not host_memory.prepare_for(torch.device("cuda"), enabled=True)
    assert not host_memory.prepare_for(torch.device("cpu"), enabled=False)
    assert calls == []
    assert host_memory.prepare_for(torch.device("cpu"), enabled=True) and calls == [1]


class Stop(Exception):
    pass


@pytest.mark.parametrize(("value", "enabled"), [(None, True), ("false", False)])
def test_run_setup_applies_the_setting(monkeypatch, value, enabled):
    from dialsum.settings import get_settings

    if value is not None:
        monkeypatch.setenv("DIALSUM_KEEP_FREED_HOST_MEMORY", value)
    get_settings.cache_clear()
    seen = []

    def record(device, on):
        seen.append((device.type, on))
        raise Stop

    monkeypatch.setattr(host_memory, "prepare_for", record)
    with pytest.raises(Stop):
        pipeline.setup("tiny-bart", "r1", None, debug=True, group=None)
    assert seen == [(pipeline.device().type, enabled)]
