#!/usr/bin/env bash
# One short GPU check for the `device` machine (CUDA image with torch; no network). Carry `.whl`
# (nnU-Net and its missing dependencies as wheels, see the device README). Prints, writes $OUT/*.
# .whl was made with `pip wheel --no-deps -w .whl` for nnunetv2==2.8.1 dynamic-network-architectures==0.4.4
# acvl-utils==0.2.6 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6 nibabel yacs graphviz future unittest2
# linecache2 traceback2, and `pip download --no-deps --only-binary=:all: --python-version 3.12 ...` (device
# README) for SimpleITK blosc2 ndindex numexpr: 63 MiB of the 64 MiB a call may carry, so nnU-Net's trainer
# itself (which also needs connected-components-3d) cannot run there; the benchmark can.
set -u
SITE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
export PYTHONPATH=$SITE:$PWD PATH=$SITE/bin:$PATH nnUNet_extTrainer=$PWD/nnunetv2_ciml/_nnunet_ext
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, nnunetv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. BraTS-like plan, torch.compile (as nnU-Net trains on CUDA), AMP"
timeout 240 python3 benchmarks/bench_ciml_vs_plain.py --device cuda --steps 10 --compile --setups brats \
    --models plain ciml ciml_coarseMessages --json "$OUT/bench_cuda_compiled.json"
echo "== 2. both plans, eager, AMP"
timeout 300 python3 benchmarks/bench_ciml_vs_plain.py --device cuda --steps 10 \
    --models plain ciml ciml_freeMessages ciml_coarseMessages --json "$OUT/bench_cuda_eager.json"
