#!/usr/bin/env python3
"""Train the shipped class-conditional DDPM on scikit-learn's bundled digits (16x16, [-1, 1]).

The reference U-Net (GroupNorm residual blocks, sinusoidal time embedding, self-attention at
the lowest resolution 4x4 and in the bottleneck, a class embedding added to the time
embedding with a null class for classifier-free guidance) learns epsilon (Ho et al. 2020,
eq. 14: ``|eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)|^2``) under linear betas,
T = 1000. ``abar_t`` is the numpy :class:`~ddpm_export.diffusion.Schedule`'s, so training and
sampling share one schedule. Labels are dropped to the null class with ``--p-uncond``
(Ho & Salimans 2022). Adam with a linear warm-up and cosine decay of the learning rate; the
saved weights are an EMA with a warm-up (``decay = min(ema, (1 + step) / (10 + step))``), so
short runs are not dominated by the random initialisation.

The held-out digits (``ddpm_export.quality.load_digits_split``) are never seen here.

    OMP_WAIT_POLICY=PASSIVE python tools/train.py --out ddpm_export/models/digits --force

Seeded: the same flags and thread count give the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ddpm_export.config import UNetConfig
from ddpm_export.diffusion import DiffusionConfig, Schedule
from ddpm_export.errors import BadInputError, DdpmExportError, NonFiniteOutputError, describe, exit_status
from ddpm_export.files import atomic_dir, check_output_folder
from ddpm_export.nn.checkpoint import CHECKPOINT_FOLDER, DIFFUSION_NAME, build_model, write_checkpoint
from ddpm_export.quality import HELDOUT_SIZE, SPLIT_SEED, load_digits_split

TRAINING_NAME = "training.json"   # the flags and results of the run, beside the checkpoint
KEPT_FILES = ("README.md",)       # hand-written files of an existing --out folder survive --force
DERIVED_FILES = ("model.onnx",)   # made from the weights (a preset's shipped export): dropped, to be regenerated
#: what --force may replace: a checkpoint folder, with the kept and the derived files
TRAIN_FOLDER = dataclasses.replace(CHECKPOINT_FOLDER,
                                   names=CHECKPOINT_FOLDER.names | set(KEPT_FILES) | set(DERIVED_FILES))


#: GroupNorm groups of every level: --base-channels must be a multiple of it
NUM_GROUPS = 8


def model_config(base_channels: int) -> UNetConfig:
    """16x16x1, three levels (16, 8, 4), attention at 4x4 and in the bottleneck, 10 classes + null."""
    return UNetConfig(
        in_channels=1, out_channels=1, sample_size=16,
        base_channels=base_channels, channel_mult=(1, 2, 2), num_res_blocks=1,
        attention_resolutions=(4,), mid_attention=True, num_groups=NUM_GROUPS,
        num_classes=10, class_conditioning="embedding", null_class=True,
    )


#: the largest --lr: Adam's first step is lr / (1 - beta1) = 10 lr, which must be a float32 (the weights' type)
MAX_LR = float(torch.finfo(torch.float32).max) * (1 - 0.9)


#: the DiffusionConfig fields training depends on (the rest are the sampler's defaults)
FORWARD_PROCESS_FIELDS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")


def diffusion_config() -> DiffusionConfig:
    """Linear betas, T = 1000, epsilon; sampler defaults DDIM, 50 steps, eta 0, x0 clipped."""
    return DiffusionConfig(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon",
                           sampler="ddim", num_inference_steps=50, eta=0.0, clip_sample=True)


def lr_at(step: int, total: int, lr: float, warmup: int, final_frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``final_frac * lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="ddpm_export/models/digits", help="checkpoint folder to write")
    p.add_argument("--steps", type=int, default=2400, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate")
    p.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    p.add_argument("--final-lr-frac", type=float, default=0.05, help="cosine decay ends at this fraction of --lr")
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay cap (warm-up: min(ema, (1+s)/(10+s)))")
    p.add_argument("--p-uncond", type=float, default=0.1, help="probability of dropping a label to the null class")
    p.add_argument("--base-channels", type=int, default=32, help="U-Net width C0 (levels C0, 2C0, 2C0)")
    p.add_argument("--seed", type=int, default=0, help="seeds initialisation, batches, timesteps and noise")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.threads < 1:
        p.error("--steps, --batch-size and --threads must be >= 1")
    if not 0.0 <= args.p_uncond < 1.0:
        p.error("--p-uncond must be in [0, 1)")
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a finite number > 0, got {args.lr}")
    if args.lr > MAX_LR:
        p.error(f"--lr must be at most {MAX_LR:.6g} (Adam's first step, 10x the rate, must be a float32), "
                f"got {args.lr}")
    if args.warmup < 0 or not 0.0 <= args.final_lr_frac <= 1.0:
        p.error("--warmup must be >= 0 and --final-lr-frac in [0, 1]")
    if not 0.0 <= args.ema < 1.0:
        p.error(f"--ema must be in [0, 1) (the EMA decay), got {args.ema}")
    if args.base_channels < 1 or args.base_channels % NUM_GROUPS:
        p.error(f"--base-channels must be a multiple of {NUM_GROUPS} (the GroupNorm groups), >= {NUM_GROUPS}; "
                f"got {args.base_channels}")
    return args


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    digits = load_digits_split()
    data_x = torch.from_numpy(digits.train_x)
    data_y = torch.from_numpy(digits.train_y)
    if args.batch_size > len(data_x):
        raise BadInputError(f"--batch-size {args.batch_size} is more than the {len(data_x)} training digits")
    cfg, dcfg = model_config(args.base_channels), diffusion_config()
    abar = torch.from_numpy(np.array(Schedule.from_config(dcfg).alphas_cumprod, dtype=np.float32))
    null_class = cfg.num_classes  # id 10

    model = build_model(cfg, seed=args.seed).train()
    ema = build_model(cfg, seed=args.seed).eval()
    ema.load_state_dict(model.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {n_params:,} parameters on {len(data_x)} digits (held out: {HELDOUT_SIZE}, split seed "
          f"{SPLIT_SEED}); {args.steps} steps x batch {args.batch_size}, {args.threads} thread(s)", flush=True)

    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    perm, cursor = torch.randperm(len(data_x), generator=gen), 0
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(args.steps), disable=args.no_progress, dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        if cursor + args.batch_size > len(perm):
            perm, cursor = torch.randperm(len(data_x), generator=gen), 0
        idx = perm[cursor:cursor + args.batch_size]
        cursor += args.batch_size
        x0, y = data_x[idx], data_y[idx].clone()
        y[torch.rand(len(y), generator=gen) < args.p_uncond] = null_class
        t = torch.randint(0, dcfg.num_train_timesteps, (len(x0),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps                    # q(x_t | x0), Ho eq. 4

        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, args.final_lr_frac)
        loss = F.mse_loss(model(x_t, t, y), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, model, min(args.ema, (1 + step) / (10 + step)))

        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            recent = float(np.mean(losses[-50:]))
            if args.no_progress:
                if step % 100 == 0 or step == args.steps - 1:
                    print(f"step {step:5d}  loss {recent:.4f}  {time.perf_counter() - start:6.0f} s", flush=True)
            else:
                bar.set_postfix(loss=f"{recent:.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
    bar.close()
    wall = time.perf_counter() - start
    final_loss = float(np.mean(losses[-100:]))
    if not math.isfinite(final_loss) or not all(bool(torch.isfinite(p).all()) for p in ema.parameters()):
        raise NonFiniteOutputError(f"training diverged (final loss {final_loss}): the weights are not finite; nothing "
                                   f"was written -- lower --lr or raise --warmup")
    print(f"final loss (mean of the last {min(100, len(losses))} steps): {final_loss:.4f}; "
          f"wall time {wall:.0f} s ({wall / 60:.1f} min)", flush=True)
    return {"model": ema, "diffusion": dcfg, "params": n_params, "final_loss": final_loss, "wall_s": wall}


def write(out: Path, result: dict, args: argparse.Namespace, command: str) -> None:
    """The checkpoint, training.json and the hand-written files of an existing --out folder
    (:data:`KEPT_FILES`) in one folder swap (``atomic_dir``: nothing half-written, the old folder
    kept until the new one is complete)."""
    with atomic_dir(out, TRAIN_FOLDER, force=args.force) as tmp:
        write_checkpoint(result["model"], tmp, diffusion=result["diffusion"])
        record = {"command": command,
                  "args": {k: v for k, v in vars(args).items() if k not in ("force", "no_progress")},
                  "parameters": result["params"], "final_loss": round(result["final_loss"], 5),
                  "wall_s": round(result["wall_s"], 1), "torch": torch.__version__,
                  "split": {"heldout_size": HELDOUT_SIZE, "seed": SPLIT_SEED}}
        (tmp / TRAINING_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for name in KEPT_FILES:
            if (out / name).is_file():
                shutil.copy2(out / name, tmp / name)


def kept_sampler_defaults(out: Path, trained: DiffusionConfig) -> DiffusionConfig:
    """``trained``, or the existing --out folder's diffusion.json when it describes the same forward
    process (its sampler defaults -- sampler, steps, solver settings -- were chosen for the model,
    e.g. the shipped digits' UniPC-10, and retraining keeps them)."""
    path = out / DIFFUSION_NAME
    try:
        old = DiffusionConfig.load(path) if path.is_file() else None
    except DdpmExportError:  # unreadable: the trained one is written
        return trained
    same = old is not None and all(getattr(old, f) == getattr(trained, f) for f in FORWARD_PROCESS_FIELDS)
    return old if same else trained  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean-ups run
    try:
        check_output_folder(out, TRAIN_FOLDER, args.force)  # what write's atomic_dir checks, before the training
        result = train(args)
        result["diffusion"] = kept_sampler_defaults(out, result["diffusion"])
        dropped = [name for name in DERIVED_FILES if (out / name).is_file()]
        write(out, result, args, " ".join(["python tools/train.py", *(sys.argv[1:] if argv is None else argv)]))
    except (DdpmExportError, OSError) as e:
        print(f"error: {describe(e)}", file=sys.stderr)
        return exit_status(e)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"wrote {out}/ (config.json, model.safetensors, diffusion.json, {TRAINING_NAME})", flush=True)
    for name in dropped:
        print(f"note: the old {name} was made from the old weights and is gone: regenerate it with "
              f"`ddpm-export onnx --model {out} -o {out / name}`", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
