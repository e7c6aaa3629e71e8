"""Blend two adapters of the same shape, weight by weight: (1 - t) * A + t * B.

A weight average of two fine-tunes of one ancestor often keeps what each learned (WiSE-FT, model soups),
where training one of them on the other's tasks costs it its own. Here: the shipped adapter (pass keys,
facts) and a descendant trained on service logs (incidents):

    python scripts/blend_adapters.py checkpoints/r12/adapter.safetensors \\
        checkpoints/r15-l1/adapter.safetensors 0.5 blend.safetensors
    comet eval passkey --lengths 4k --adapter blend.safetensors

Every tensor, the memory nets' and the LoRA's, is averaged as it is (a low-rank pair's product is then not
the average of the two products; both runs share their ancestor's factors, so the difference stays small).
Both adapters must have the same config and base model; the blend keeps A's metadata and notes how it was made.
"""

from __future__ import annotations

import json
import sys

from safetensors.torch import save as st_save

from comet_core.adapter import read_adapter
from comet_core.errors import CometError
from comet_core.state_io import atomic_write


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    a_path, b_path, t_text, dst = argv
    try:
        t = float(t_text)
    except ValueError:
        t = float("nan")  # fails the range check below, with the same message
    if not 0.0 <= t <= 1.0:
        print(f"blend_adapters: {t_text!r}: the weight of B must be a number from 0 to 1", file=sys.stderr)
        return 2
    try:
        meta_a, a = read_adapter(a_path)
        meta_b, b = read_adapter(b_path)
    except CometError as e:  # missing, unreadable or not an adapter
        print(f"blend_adapters: {e}", file=sys.stderr)
        return 1
    for key in ("config", "base_fingerprint"):
        if meta_a[key] != meta_b[key]:
            print(f"blend_adapters: the adapters differ in {key}; only adapters of one shape blend", file=sys.stderr)
            return 1
    if set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
        print("blend_adapters: the adapters hold different tensors", file=sys.stderr)
        return 1
    blend = {k: ((1.0 - t) * a[k].float() + t * b[k].float()).contiguous() for k in sorted(a)}
    meta = {**meta_a, "notes": {"blend": {"a": a_path, "b": b_path, "t": t,
                                          "a_notes": meta_a.get("notes"), "b_notes": meta_b.get("notes")}}}
    atomic_write(dst, st_save(blend, metadata={"comet_adapter": json.dumps(meta)}))
    print(f"{dst}: {1 - t:g} x {a_path} + {t:g} x {b_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
