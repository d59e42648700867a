#!/usr/bin/env bash
# One short GPU check for the `device` machine (CUDA image with torch; no network). Carry `.whl`
# (nnU-Net and its missing dependencies as wheels, see the device README). Prints, writes $OUT/*.
set -u
SITE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
export PYTHONPATH=$SITE:$PWD PATH=$SITE/bin:$PATH nnUNet_extTrainer=$PWD/nnunetv2_ciml/_nnunet_ext
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, nnunetv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. BraTS-like plan, torch.compile (as nnU-Net trains on CUDA), AMP"
timeout 300 python3 benchmarks/bench_ciml_vs_plain.py --device cuda --steps 10 --compile --setups brats \
    --models plain ciml ciml_coarseMessages --json "$OUT/bench_cuda_compiled.json"
echo "== 2. both plans, eager, AMP"
timeout 200 python3 benchmarks/bench_ciml_vs_plain.py --device cuda --steps 10 \
    --models plain ciml ciml_coarseMessages --json "$OUT/bench_cuda_eager.json"
