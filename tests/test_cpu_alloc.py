"""glibc malloc tuning: large blocks are reused after free instead of being page-faulted in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

# allocate, touch and free a 48 MiB tensor (a [4096, 3072] float32 activation) 20 times; count the
# minor page faults of the last 10 (the first few may fault in fresh heap either way)
_PROBE = """
import json, resource, sys, torch
from m3embed.cpu_alloc import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tune" else False
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(4096, 3072).fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "again": tune_malloc(), "faults": sum(faults[10:])}))
"""


def _probe(arg: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, arg], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuning_stops_refaulting_large_blocks():
    plain = _probe("plain", M3EMBED_MALLOC_TUNING="0")
    tuned = _probe("tune", M3EMBED_MALLOC_TUNING="1")
    assert plain["tuned"] is False and plain["again"] is False  # the opt-out is honoured
    assert tuned["tuned"] is True and tuned["again"] is True  # idempotent
    pages = 4096 * 3072 * 4 // 4096
    # untuned: every allocation is a fresh mmap, faulted in page by page (10 × 12,288 pages)
    assert plain["faults"] > 10 * pages // 2
    # tuned: the freed block is reused, nearly no new faults
    assert tuned["faults"] < pages // 4
