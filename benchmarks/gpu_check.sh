#!/usr/bin/env bash
# One GPU check for a machine lent with a GPU (CUDA image with torch; no network), within one 600 s call.
# Carry `.whl`: nnU-Net and its missing dependencies as wheels, only what is imported (made with
# `pip wheel --no-deps -w .whl nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 acvl-utils==0.2.6
# batchgenerators==0.25.5 batchgeneratorsv2==0.3.6 connected-components-3d` plus `pip download --no-deps
# --only-binary=:all: --python-version 3.12` of SimpleITK blosc2 ndindex numexpr). Prints; writes $OUT/*.
set -u
SITE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
export PYTHONPATH=$SITE:$PWD PATH=$SITE/bin:$PATH nnUNet_extTrainer=$PWD/nnunetv2_ciml/_nnunet_ext
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

echo "== 0. torch, cuDNN, and whether cuDNN runs the AMP Conv3d (torch 2.9.0 disabled it: ~4x slower)"
python3 - <<'EOF'
import time, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
conv = torch.nn.Conv3d(64, 64, 3, padding=1).cuda()
x = torch.randn(2, 64, 64, 64, 64, device="cuda")
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        for _ in range(3):
            conv(x)
        torch.cuda.synchronize(); t = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                conv(x)
            torch.cuda.synchronize()
        kernels = {e.key for e in prof.key_averages()}
        cudnn = any("cudnn" in k.lower() or "sm90" in k.lower() or "xmma" in k.lower() for k in kernels)
    print(f"Conv3d 64->64 k3 2x64^3 {str(dtype):15s} {(time.perf_counter() - t) / 10 * 1e3:7.2f} ms/call, "
          f"cuDNN kernels: {cudnn}")
EOF

echo "== 1. counted costs (meta device): the FLOP and activation ratios the timings below are judged against"
timeout 60 python3 benchmarks/bench_ciml_vs_plain.py --count --setups brats petct --models plain ciml ciml_fullWidth \
    ciml_MACmatched ciml_groupedBranches --json "$OUT/counts.json"
echo "== 2. BraTS and PET/CT plans, eager, AMP: step / peak memory / inference ratios (targets: memory <= 1.3x)"
timeout 150 python3 benchmarks/bench_ciml_vs_plain.py --device cuda --steps 10 \
    --models plain ciml ciml_fullWidth ciml_MACmatched ciml_groupedBranches ciml_noRecompute \
    --json "$OUT/bench_cuda_eager.json"
echo "== 3. BraTS plan, torch.compile (as nnU-Net trains on CUDA), AMP (target: step <= 1.2x the FLOP ratio)"
timeout 150 python3 benchmarks/bench_ciml_vs_plain.py --device cuda --steps 10 --compile --setups brats \
    --models plain ciml --json "$OUT/bench_cuda_compiled.json"
echo "== 4. nnUNetv2_train epochs with 12 augmentation workers (nnU-Net's 5-epoch benchmark trainers;"
echo "   what is left of the call: the log shows the epochs measured before a time-out)"
timeout 180 python3 benchmarks/bench_epoch_time.py --work "$(mktemp -d)" --device cuda --workers 12 --size 160 \
    --cases 12 --json "$OUT/epoch_time.json"
exit 0
