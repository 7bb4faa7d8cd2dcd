"""Architecture analysis of a U-Net (torch): per-block table, receptive fields, what-if costs,
ONNX Runtime profile. Used by ``ddpm-export inspect``; imports torch, so nothing torch-free
imports it."""
