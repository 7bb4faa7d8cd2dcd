"""One module per ``ddpm-export`` subcommand, each defining a click command named ``command``.
Modules import torch, onnx or onnxruntime inside the command function, never at import time,
so ``ddpm-export --help`` stays fast and works without the export extra."""
