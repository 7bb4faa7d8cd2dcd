#!/usr/bin/env bash
# The GPU check, for a session that is lent a device machine (H200, PyTorch with CUDA, no
# TensorRT, no network). Run from the repository root there:
#   bash tools/gpu_check.sh
# It prints what the GPU tests measured; TensorRT tests stay skipped (no tensorrt there).
set -uo pipefail
export PYTHONPATH=$PWD OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
python3 -m pytest -q -rs -s -m "gpu or tensorrt" -p no:cacheprovider tests/export/test_gpu.py tests/export/test_tensorrt_build.py
