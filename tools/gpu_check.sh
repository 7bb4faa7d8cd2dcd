#!/usr/bin/env bash
# The GPU check, for a session that is lent a device machine. Run from the repository root there:
#   bash tools/gpu_check.sh [--model digits]
# 1. the GPU / TensorRT / ONNX Runtime GPU tests (each skips with its reason when its piece is missing);
# 2. tools/gpu_check.py: fp32 and fp16 engines (the fp16 one from the fp32 file), a version-compatible
#    ampere+ engine built in one step from the model, verify of each against PyTorch (fp32 >= 60 dB,
#    fp16 >= 40 dB), ONNX Runtime's CUDA and TensorRT providers, and bench's CPU paths -- one table.
set -uo pipefail
export PYTHONPATH=$PWD OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" || true
python3 -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>/dev/null || echo "tensorrt: not installed"
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python3 -m pytest -q -rs -s -m "gpu or tensorrt" -p no:cacheprovider tests/export/test_gpu.py tests/export/test_tensorrt_build.py \
  tests/export/test_tensorrt_gpu.py tests/runtime/test_ort_gpu.py
tests=$?
python3 tools/gpu_check.py "$@"
table=$?
exit $(( tests != 0 ? tests : table ))
