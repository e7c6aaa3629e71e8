"""Copy an adapter with other memory settings that are not weights: the temp-beacon stride s and the
temp-queue budget B_T (one temp beacon embedding serves every stride; the queue is only a length).
To start a training run at a new beacon density from a trained adapter:

    python scripts/respace_adapter.py comet_core/adapters/smollm2.safetensors s4.safetensors stride=4 budget=128
    comet train --init-adapter s4.safetensors ...

The global slots (n_global: one beacon embedding each), chunk size, ranks and LoRA are kept as they are.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from safetensors.torch import save as st_save

from comet_core.adapter import read_adapter
from comet_core.config import CometConfig
from comet_core.errors import CometError
from comet_core.state_io import atomic_write

SETTABLE = ("stride", "budget")


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst, pairs = argv[0], argv[1], argv[2:]
    try:
        meta, tensors = read_adapter(src)
    except CometError as e:  # missing, unreadable or not an adapter
        print(f"respace_adapter: {e}", file=sys.stderr)
        return 1
    cfg = CometConfig.from_dict(meta["config"])
    changes = {}
    for p in pairs:
        key, _, value = p.partition("=")
        if key not in SETTABLE or not value.isdigit():
            print(f"respace_adapter: {p!r}: expected one of {', '.join(SETTABLE)} as key=integer", file=sys.stderr)
            return 2
        changes[key] = int(value)
    try:
        cfg = replace(cfg, **changes)  # CometConfig checks the values
    except ValueError as e:
        print(f"respace_adapter: {e}", file=sys.stderr)
        return 2
    meta["config"] = cfg.to_dict()
    meta.setdefault("notes", {})["respaced_from"] = {"adapter": src, **changes}
    data = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"comet_adapter": json.dumps(meta)})
    atomic_write(dst, data)
    print(f"{dst}: {meta['config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
