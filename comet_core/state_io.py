"""Memory-state files: safetensors (no code is executed on load), atomic writes, strict validation.

A state file holds, without the batch dimension:
    global_state  [L, G, d]   per-layer global state (global memory is recomputed from it)
    temp          [L, T, d]   per-layer temp queue, oldest first, T = min(budget, beacons)
    pending_ids   [n] int32   tokens of the unfinished chunk
    pending_text  [m] uint8   UTF-8 text not yet tokenized
and one metadata entry "comet" (JSON): format, version, model name and fingerprint, precision, dtype,
settings (c, s, G, B_T), counters, the sources read, and a sha256 of the tensor bytes (safetensors
itself does not detect a flipped byte in the data). A state written while a read goes on (a checkpoint
of `comet read --follow`, or of any read with --checkpoint-every) also has a "checkpoint" entry (number,
rhythm, the writer's pid and host) and an "interrupted" record (how to resume it); the final save has
neither.

Concurrent readers: every write replaces the file by an atomic rename, and a reader reads the file in
one go (`read_state_file`), then parses those bytes only, so it sees one complete version, never a mix.
Size: L * (G + T) * d * bytes_per_element (+ the pending tokens), e.g. SmolLM2-135M (L=30, d=576) with
G=64, T=256 in bf16: 30 * 320 * 576 * 2 = 11,059,200 bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import CometError
from .memory import MemoryState

FORMAT = "comet-state"
VERSION = 1
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class StateError(CometError):
    """A state file that cannot be used; the message is one line for the user."""


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, rename: readers never see a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _bytes_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8) if b else torch.zeros(0, dtype=torch.uint8)


def state_to_bytes(state: MemoryState, meta: dict) -> bytes:
    """Serialise a batch-1 state. `meta` must hold model, fingerprint, precision, settings."""
    tensors: dict[str, torch.Tensor] = {
        "pending_ids": torch.tensor(state.pending_ids, dtype=torch.int32),
        "pending_text": _bytes_tensor(state.pending_text.encode("utf-8")),
    }
    if state.chunks:
        for name, per_layer in (("global_state", state.global_state), ("temp", state.temp)):
            if per_layer[0] is None:
                continue
            if per_layer[0].shape[0] != 1:
                raise ValueError("only batch-1 states can be saved")
            tensors[name] = torch.stack([t[0] for t in per_layer]).detach().cpu().contiguous()
    dtype = str(state.global_state[0].dtype).removeprefix("torch.") if state.chunks else None
    info = dict(meta, format=FORMAT, version=VERSION, chunks=state.chunks, tokens=state.tokens,
                beacons=state.beacons, pending_tokens=len(state.pending_ids), dtype=dtype,
                n_layers=state.n_layers, sources=state.sources, data_sha256=_digest(tensors))
    return st_save(tensors, metadata={"comet": json.dumps(info)})


def save_state(path: str | os.PathLike, state: MemoryState, meta: dict) -> int:
    """Atomically write a state file; returns its size in bytes."""
    data = state_to_bytes(state, meta)
    try:
        atomic_write(path, data)
    except OSError as e:
        raise StateError(f"cannot write state to {path}: {e.strerror or e}") from e
    return len(data)


@dataclass(frozen=True)
class StateFile:
    """One version of a state file, read in one go: what `load_state` and `comet info` work from."""

    path: str
    meta: dict
    tensors: dict[str, torch.Tensor]
    nbytes: int  # size of that version (the file on disk may have been replaced since)

    @property
    def age(self) -> float | None:
        """Seconds since this version was written (from its "updated" time), None if unknown."""
        return age_seconds(self.meta)


def age_seconds(meta: dict) -> float | None:
    try:
        updated = datetime.fromisoformat(meta["updated"])
    except (KeyError, TypeError, ValueError):
        return None
    if updated.tzinfo is None:
        updated = updated.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - updated).total_seconds())


def read_meta(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Parse and integrity-check a state file; returns (metadata, tensors). No model needed."""
    f = read_state_file(path)
    return f.meta, f.tensors


def read_state_file(path: str | os.PathLike) -> StateFile:
    """Read a state file once (one open, one read: a concurrent atomic replace cannot mix two versions),
    parse and integrity-check it. No model needed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"{path}: no such state file") from None
    except IsADirectoryError:
        raise StateError(f"{path}: is a directory, not a state file") from None
    except OSError as e:
        raise StateError(f"{path}: cannot read ({e.strerror or e})") from None
    if not data:
        raise StateError(f"{path}: not a comet state file (the file is empty)")
    if data[8:9] != b"{":  # a safetensors file: 8 bytes of header length, then the JSON header
        raise StateError(f"{path}: not a comet state file")
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")  # (safe_open().metadata() would open the file again)
        raw = json.loads(data[8:8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError) as e:
        raise StateError(f"{path}: corrupt or truncated state file ({str(e).splitlines()[0][:80]})") from None
    if "comet" not in raw:
        raise StateError(f"{path}: not a comet state file (no comet metadata)")
    try:
        meta = json.loads(raw["comet"])
    except json.JSONDecodeError:
        raise StateError(f"{path}: corrupt state file (bad metadata)") from None
    if meta.get("format") != FORMAT:
        raise StateError(f"{path}: not a comet state file (format {meta.get('format')!r})")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise StateError(f"{path}: state format version {meta.get('version')} is newer than this comet "
                         f"supports ({VERSION}); upgrade comet")
    if _digest(tensors) != meta.get("data_sha256"):
        raise StateError(f"{path}: corrupt state file (checksum mismatch)")
    return StateFile(str(path), meta, tensors, len(data))


def load_state(path: str | os.PathLike | StateFile, expect: dict) -> tuple[MemoryState, dict]:
    """Load a state (a path, or a StateFile already read) and check it fits the model: `expect` holds
    fingerprint, settings, dtype, n_layers, d and model (name, for messages). Raises StateError with a
    precise one-line reason otherwise."""
    f = path if isinstance(path, StateFile) else read_state_file(path)
    path, meta, t = f.path, f.meta, f.tensors
    if meta.get("fingerprint") != expect["fingerprint"]:
        raise StateError(f"{path}: state was made with another model or adapter ({meta.get('model')}, "
                         f"fingerprint {str(meta.get('fingerprint'))[:12]}), not {expect['model']} "
                         f"({expect['fingerprint'][:12]})")
    if meta.get("settings") != expect["settings"]:
        diff = ", ".join(f"{k} {meta.get('settings', {}).get(k)} vs {v}" for k, v in expect["settings"].items()
                         if meta.get("settings", {}).get(k) != v)
        raise StateError(f"{path}: state was made with other memory settings ({diff})")
    chunks, L, d = meta.get("chunks", 0), expect["n_layers"], expect["d"]
    state = MemoryState.empty(L)
    if chunks:
        if meta.get("dtype") != expect["dtype"]:
            raise StateError(f"{path}: state holds {meta.get('dtype')} tensors but the model computes in "
                             f"{expect['dtype']} (precision {meta.get('precision')} vs {expect.get('precision')})")
        s = expect["settings"]
        g, tq = t.get("global_state"), t.get("temp")
        n_temp = min(s["budget"], meta.get("beacons", 0))
        if g is None or tuple(g.shape) != (L, s["n_global"], d) or g.dtype != DTYPES[expect["dtype"]]:
            raise StateError(f"{path}: corrupt state file (global state shape {None if g is None else tuple(g.shape)})")
        if n_temp and (tq is None or tuple(tq.shape) != (L, n_temp, d) or tq.dtype != g.dtype):
            raise StateError(f"{path}: corrupt state file (temp queue shape {None if tq is None else tuple(tq.shape)})")
        if not torch.isfinite(g.float()).all() or (n_temp and not torch.isfinite(tq.float()).all()):
            raise StateError(f"{path}: corrupt state file (non-finite values)")
        state.global_state = [x[None] for x in g]
        state.temp = [x[None] for x in tq] if n_temp else [None] * L
    state.chunks, state.tokens, state.beacons = chunks, meta.get("tokens", 0), meta.get("beacons", 0)
    state.pending_ids = t["pending_ids"].tolist() if "pending_ids" in t else []
    try:
        state.pending_text = bytes(t["pending_text"].numpy()).decode("utf-8") if "pending_text" in t else ""
    except UnicodeDecodeError:
        raise StateError(f"{path}: corrupt state file (pending text)") from None
    state.sources = list(meta.get("sources", []))
    return state, meta
