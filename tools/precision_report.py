#!/usr/bin/env python3
"""Measure fp16 error: our explicitly typed mixed-precision export vs a naive whole-graph fp16
conversion (onnxconverter-common's ``convert_float_to_float16``), both against torch fp32.

The model is a preset (default ddpm-cifar10) re-initialised with ``zero_init=False`` so that
every residual and attention branch carries weights at initialisation scale instead of zero —
with zero-initialised branches the network is nearly the identity and hides fp16 errors.
Timesteps cover [0, T) including 937 (where an fp16 sinusoid argument loses its fraction).

    OMP_WAIT_POLICY=PASSIVE python tools/precision_report.py [--model ddpm-cifar10] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ddpm_export.config import UNetConfig
from ddpm_export.export.onnx import export_onnx
from ddpm_export.export.validate import torch_reference
from ddpm_export.metrics import errors
from ddpm_export.nn.checkpoint import CONFIG_NAME, build_model, save_checkpoint
from ddpm_export.presets import preset_dir, preset_names


def naive_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Whole-graph fp16: every float initializer, constant and Cast-to-float becomes float16,
    with casts only at the float32 graph inputs and outputs (what an unconstrained builder
    flag does). Resize's ``scales`` stay float32, as the op requires."""
    g = model.graph
    keep_fp32 = {n.input[2] for n in g.node if n.op_type == "Resize" and len(n.input) > 2}
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep_fp32:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == TensorProto.FLOAT \
                    and node.output[0] not in keep_fp32:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    casts = []
    for inp in g.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            for node in g.node:
                node.input[:] = [inp.name + "_fp16" if i == inp.name else i for i in node.input]
            casts.append(helper.make_node("Cast", [inp.name], [inp.name + "_fp16"], to=TensorProto.FLOAT16))
    for out in g.output:
        for node in g.node:
            node.output[:] = [out.name + "_fp16" if o == out.name else o for o in node.output]
        g.node.append(helper.make_node("Cast", [out.name + "_fp16"], [out.name], to=TensorProto.FLOAT))
    for c in reversed(casts):
        g.node.insert(0, c)
    del g.value_info[:]
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ddpm-cifar10", help="preset whose config is used")
    ap.add_argument("--batch", type=int, default=4, help="rows per call (>= 2: one row is t = 937)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights and the inputs")
    args = ap.parse_args()
    if args.batch < 2:
        ap.error(f"--batch must be >= 2 (the rows span t = 0..T-1 and one is t = 937), got {args.batch}")
    if args.model not in preset_names():
        ap.error(f"--model {args.model!r} is not a preset; choose one of: {', '.join(preset_names())}")

    cfg = UNetConfig.load(preset_dir(args.model) / CONFIG_NAME).replace(zero_init=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = save_checkpoint(build_model(cfg, seed=args.seed), tmp / "model")
        files = {}
        for precision in ("fp32", "fp16"):
            start = time.perf_counter()
            result = export_onnx(folder, tmp / f"{precision}.onnx", precision=precision, attention="decomposed",
                                 max_batch=max(args.batch, 4), opt_batch=args.batch, validate=False, log=lambda s: None)
            files[precision] = result.path
            print(f"export {precision}: {time.perf_counter() - start:.1f} s, {result.size_bytes / 2**20:.1f} MiB")
        naive = naive_fp16(onnx.load(str(files["fp32"])))
        onnx.save(naive, str(tmp / "naive16.onnx"))
        files["naive-fp16"] = tmp / "naive16.onnx"

        unet = build_model(cfg, seed=args.seed).eval()
        from ddpm_export.contract.spec import ExportSpec

        spec = ExportSpec.from_config(cfg, opt_batch=args.batch, max_batch=max(args.batch, 4))
        feeds = spec.sample_inputs(args.batch, seed=args.seed)
        feeds["t"] = np.linspace(0, cfg.num_train_timesteps - 1, args.batch).astype(np.int64)
        feeds["t"][-2] = 937
        ref = torch_reference(unet, spec, feeds)
        report = {"model": args.model, "zero_init": False, "batch": args.batch, "t": feeds["t"].tolist(),
                  "reference_rms": float(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))}
        for name, path in files.items():
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            out = session.run(None, feeds)[0]
            max_abs, rel_l2 = errors(out, ref)
            per_t = [errors(out[i:i + 1], ref[i:i + 1])[1] for i in range(args.batch)]
            report[name] = {"max_abs": max_abs, "rel_l2": rel_l2, "rel_l2_per_t": per_t}
            print(f"{name:>10}: max abs {max_abs:.3e}  rel L2 {rel_l2:.3e}  per t {['%.1e' % e for e in per_t]}")
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
