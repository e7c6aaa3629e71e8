"""Reading 10x more text must not raise peak memory: no per-chunk history, no list of all token ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, resource, sys, tracemalloc
sys.path.insert(0, sys.argv[2])
import torch
from tiny import tiny_lm, tiny_tokenizer
from comet_core.config import CometConfig
from comet_core.model import CometModel
from comet_core.reader import Reader
torch.set_num_threads(1)
n_pieces = int(sys.argv[1])
m = CometModel.create(tiny_lm(), CometConfig(chunk_size=64, stride=8, n_global=8, budget=32))
r = Reader(m, tiny_tokenizer(), block=2)
piece = "Some years ago, never mind how long precisely, the pass key was 12345. " * 40
r.feed(piece)  # warm up allocators and caches before measuring
tracemalloc.start()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for i in range(n_pieces):
    r.feed(piece.replace("12345", str(10000 + i)))
r.finish()
_, peak = tracemalloc.get_traced_memory()
print(json.dumps({"tokens": r.state.tokens, "traced_peak": peak,
                  "rss_growth_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base}))
"""


def run(n: int) -> dict:
    tests = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(n), tests], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_input():
    small, big = run(8), run(80)
    assert big["tokens"] > 9 * small["tokens"]
    assert big["traced_peak"] < small["traced_peak"] * 1.5 + 64_000
    assert big["rss_growth_kb"] < small["rss_growth_kb"] + 8_000  # < 8 MB more RSS for 10x the text
