#!/usr/bin/env python3
"""Train the digit classifier behind ``ddpm_export.quality`` (the sample-quality metric).

A small CNN, ``conv3x3(1->16) ReLU maxpool -> conv3x3(16->32) ReLU maxpool -> fc(512->64) ReLU
-> fc(64->10)``, trained in torch on the same training split as the diffusion model (the
held-out 400 digits are never seen) with random +-1 pixel shifts, and with outlier exposure (Hendrycks et al. 2019): non-digit
images (pixel noise, noise blobs, digits under heavy diffusion noise) are trained towards the
uniform distribution, so that noise is not classified with confidence. The weights are written as
safetensors under torch's names; ``ddpm_export.quality.DigitClassifier`` evaluates them in numpy.

    OMP_WAIT_POLICY=PASSIVE python tools/train_classifier.py --out ddpm_export/models/digit-classifier --force

The folder holds ``classifier.json`` (architecture, flags, held-out accuracy) and
``classifier.safetensors``; deliberately no ``config.json``, which would make it a U-Net preset.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ddpm_export.errors import (BadInputError, DdpmExportError, NonFiniteOutputError, VerificationFailed, describe,
                                exit_status)
from ddpm_export.files import OutputFolder, atomic_dir, check_output_folder
from ddpm_export.quality import (CLASSIFIER_CONFIG, CLASSIFIER_WEIGHTS, DigitClassifier, load_digits_split,
                                 real_features)


class TorchDigitClassifier(nn.Module):
    """The torch twin of :class:`ddpm_export.quality.DigitClassifier` (same names and layouts)."""

    def __init__(self, c1: int = 16, c2: int = 32, features: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * 4 * 4, features)
        self.fc2 = nn.Linear(features, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def outliers(n: int, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``n`` non-digit images in [-1, 1]: Gaussian and uniform pixel noise, smooth noise blobs, and
    digits under heavy diffusion noise (``abar < 0.15``), a quarter each."""
    k = n // 4
    rand = lambda *shape: torch.rand(shape, generator=gen)  # noqa: E731
    randn = lambda *shape: torch.randn(shape, generator=gen)  # noqa: E731
    gauss = (randn(k, 1, 16, 16) * (0.3 + 1.2 * rand(k, 1, 1, 1)) + (rand(k, 1, 1, 1) - 0.5)).clamp(-1, 1)
    unif = rand(k, 1, 16, 16) * 2 - 1
    coarse = randn(k, 1, 4, 4) if k else torch.zeros(0, 1, 4, 4)
    blobs = torch.tanh(2 * F.interpolate(coarse, size=16, mode="bilinear", align_corners=False) - 0.5)
    m = n - 3 * k
    a = 0.15 * rand(m, 1, 1, 1)
    digits = like[torch.randint(0, len(like), (m,), generator=gen)]
    noised = (a.sqrt() * digits + (1 - a).sqrt() * randn(m, 1, 16, 16)).clamp(-1, 1)
    return torch.cat([gauss, unif, blobs, noised])


#: what the classifier folder holds, so that --force replaces only such a folder (and keeps README.md)
CLASSIFIER_FOLDER = OutputFolder(CLASSIFIER_CONFIG, frozenset({CLASSIFIER_WEIGHTS, "README.md"}))


def positive(kind: type, *, or_zero: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` > 0 (>= 0 ``or_zero``; argparse names the flag when it fails)."""
    def parse(text: str) -> Any:
        value = kind(text)
        if not math.isfinite(value) or value < 0 or (value == 0 and not or_zero):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if or_zero else '>'} 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


#: the largest --lr: Adam's first step is lr / (1 - beta1) = 10 lr, which must be a float32 (the weights' type)
MAX_LR = float(torch.finfo(torch.float32).max) * (1 - 0.9)


def learning_rate(text: str) -> float:
    """An argparse type: a finite float > 0, at most :data:`MAX_LR` (above it Adam's first step overflows)."""
    value = positive(float)(text)
    if value > MAX_LR:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_LR:.6g} (Adam's first step, 10x the rate, must "
                                         f"be a float32), got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="ddpm_export/models/digit-classifier", help="folder to write")
    p.add_argument("--epochs", type=positive(int), default=40, help="passes over the training digits")
    p.add_argument("--batch-size", type=positive(int), default=64, help="digits per optimiser step")
    p.add_argument("--lr", type=learning_rate, default=2e-3, help="Adam's learning rate (cosine-annealed)")
    p.add_argument("--outlier-weight", type=positive(float, or_zero=True), default=0.5,
                   help="weight of the outlier-exposure loss (uniform target on non-digit images); 0 disables")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, shuffles and augmentations")
    p.add_argument("--threads", type=positive(int), default=1, help="torch CPU threads")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out folder written by this tool (never another folder)")
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The classifier's weights (torch names) and its record for ``classifier.json``."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    digits = load_digits_split()
    x, y = torch.from_numpy(digits.train_x), torch.from_numpy(digits.train_y)
    model = TorchDigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss = F.cross_entropy(model(random_shift(x[idx], gen)), y[idx])
            if args.outlier_weight > 0:  # outlier exposure (Hendrycks et al. 2019): be unsure off the data
                logp = F.log_softmax(model(outliers(len(idx) // 2, x, gen)), dim=1)
                loss = loss + args.outlier_weight * -logp.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:3d}  loss {total / len(x):.4f}", flush=True)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise NonFiniteOutputError(f"training diverged (last epoch's loss {total / len(x)}): the weights are not "
                                   f"finite; nothing was written -- lower --lr or --outlier-weight")
    refuse_degenerate(model, digits.heldout_x, total / len(x))
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, _record(model, args, digits, start)


def refuse_degenerate(model: nn.Module, heldout: np.ndarray, loss: float) -> None:
    """Refuse finite weights whose features are the same for every held-out digit (every ReLU dead):
    ``ddpm_export.quality`` refuses such a classifier, so it is not written."""
    try:
        real_features(DigitClassifier({k: v.detach().numpy() for k, v in model.state_dict().items()}, {}), heldout)
    except BadInputError:
        raise VerificationFailed(f"training diverged (last epoch's loss {loss}): the classifier's features are the "
                                 f"same for every held-out digit, so it tells no digits apart; nothing was written "
                                 f"-- lower --lr") from None


def _record(model: nn.Module, args: argparse.Namespace, digits: Any, start: float) -> dict[str, Any]:
    """``classifier.json``: architecture, flags, held-out accuracy and the numpy twin's agreement."""
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    clf = DigitClassifier(weights, {})
    probs = clf.probs(digits.heldout_x)
    acc = float((probs.argmax(1) == digits.heldout_y).mean())
    conf = float((probs.max(1) > 0.9).mean())
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(digits.heldout_x)).numpy()
    numpy_err = float(np.abs(clf.forward(digits.heldout_x)[1] - torch_logits).max())
    print(f"held-out accuracy {acc:.4f}, confident (>0.9) {conf:.4f}, numpy vs torch {numpy_err:.1e}", flush=True)
    return {
        "architecture": "conv3x3(1->16) ReLU maxpool2 -> conv3x3(16->32) ReLU maxpool2 -> fc(512->64) ReLU -> fc(64->10)",
        "input": "[N, 1, 16, 16] float32 in [-1, 1]",
        "features": "fc1 after ReLU, 64-d",
        "args": {k: v for k, v in vars(args).items() if k != "force"},
        "heldout_accuracy": round(acc, 4),
        "heldout_confident_fraction": round(conf, 4),
        "numpy_vs_torch_max_abs_logit": numpy_err,
        "wall_s": round(time.perf_counter() - start, 1),
    }


def write(out: Path, weights: dict[str, torch.Tensor], meta: dict[str, Any], force: bool) -> None:
    """The folder, atomically (``atomic_dir``: nothing half-written; --force replaces only a folder
    this tool wrote), keeping an existing README.md."""
    with atomic_dir(out, CLASSIFIER_FOLDER, force=force) as tmp:
        save_file(weights, str(tmp / CLASSIFIER_WEIGHTS), metadata={"producer": "ddpm-export train_classifier"})
        (tmp / CLASSIFIER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if (out / "README.md").is_file():
            shutil.copy2(out / "README.md", tmp / "README.md")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean-ups run
    try:
        check_output_folder(out, CLASSIFIER_FOLDER, args.force)  # before the training, as write() checks again
        weights, meta = train(args)
        meta["command"] = " ".join(["python tools/train_classifier.py", *(sys.argv[1:] if argv is None else argv)])
        write(out, weights, meta, args.force)
    except (DdpmExportError, OSError) as e:
        print(f"error: {describe(e)}", file=sys.stderr)
        return exit_status(e)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"wrote {out}/ ({CLASSIFIER_CONFIG}, {CLASSIFIER_WEIGHTS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
