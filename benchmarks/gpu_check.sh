#!/usr/bin/env bash
# One short GPU check for the `device` machine (CUDA image with torch; no network). Carry `.whl`
# (nnU-Net and its missing dependencies as wheels, see the device README). Prints, writes $OUT/*.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH nnUNet_extTrainer=$PWD/nnunetv2_ciml/_nnunet_ext
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, nnunetv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. benchmark: CIML vs plain nnU-Net (eager, AMP)"
timeout 330 python3 benchmarks/bench_ciml_vs_plain.py --device cuda --steps 10 \
    --models plain ciml ciml_noMessages ciml_storedMessages --json "$OUT/bench_cuda.json"

echo "== 2. real nnU-Net training on CUDA with torch.compile and AMP (tiny synthetic dataset)"
export nnUNet_raw=/tmp/nn/raw nnUNet_preprocessed=/tmp/nn/pre nnUNet_results=/tmp/nn/res nnUNet_compile=t \
       nnUNet_def_n_proc=4 nnUNet_n_proc_DA=4
python3 -c "
import sys; sys.path.insert(0, 'tests')
from pathlib import Path; from synthetic import make_dataset
make_dataset(Path('/tmp/nn/raw'), 901, True, num_cases=8, shape=(32, 32, 32))"
timeout 200 nnUNetv2_plan_and_preprocess -d 901 -c 3d_fullres -np 4 -npfp 4 > "$OUT/plan.log" 2>&1 || tail -n 20 "$OUT/plan.log"
timeout 240 nnUNetv2_train 901 3d_fullres 0 -tr nnUNetTrainerCIML_CPUtest -device cuda > "$OUT/train.log" 2>&1
echo "train exit $?"; grep -E "torch.compile|CIML decomposition|subtask|branch|train_loss|Epoch time|Mean Validation|Error|error" "$OUT/train.log" | tail -n 25
