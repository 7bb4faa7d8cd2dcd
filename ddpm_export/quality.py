"""Offline sample quality for the shipped digits model: a tiny classifier evaluated in numpy.

The data are scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), upscaled to 16x16
(bilinear, half-pixel centres, as ``torch.nn.functional.interpolate(..., align_corners=False)``)
and scaled to [-1, 1]. :func:`load_digits_split` holds out a fixed, stratified 400 of them
(``HELDOUT_SIZE``, seed ``SPLIT_SEED``) that neither the diffusion model nor the classifier
is trained on.

Metrics for a set of generated samples ``[N, 1, 16, 16]`` in [-1, 1] (:func:`score`):

- ``confident_fraction``: share of samples whose top class probability is > 0.9;
- ``class_entropy_bits``: entropy of the histogram of predicted classes (log2 10 = 3.32 is
  perfectly balanced; 0 is one class only);
- ``frechet``: Fréchet distance between Gaussians fitted to the classifier's penultimate
  features of the samples and of the held-out real digits (Heusel et al. 2017, the FID formula
  ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)`` in a digit-classifier feature space instead of
  Inception's). :func:`reference_frechet` gives the same figure for held-out real vs training
  real digits: the distance two real sets of these sizes have, the yardstick for the samples.

Needs numpy and safetensors at inference; scikit-learn only to load the data; no torch.
:class:`OnnxRuntimeBackend` runs an exported U-Net through :func:`ddpm_export.diffusion.sample`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddpm_export.errors import BadInputError, InputNotFoundError, export_extra_needed
from ddpm_export.jsonio import parse_json
from ddpm_export.presets import MODELS_DIR

if TYPE_CHECKING:  # pragma: no cover
    from ddpm_export.runtime.onnxruntime_backend import OnnxRuntimeBackend

__all__ = [
    "CLASSIFIER_DIR",
    "CONFIDENCE_THRESHOLD",
    "DigitClassifier",
    "Digits",
    "HELDOUT_SIZE",
    "onnx_backend",
    "QualityReport",
    "SPLIT_SEED",
    "feature_stats",
    "frechet_distance",
    "generate",
    "load_digits_split",
    "real_features",
    "reference_frechet",
    "score",
    "upscale2x",
]

CLASSIFIER_DIR = MODELS_DIR / "digit-classifier"
CLASSIFIER_CONFIG = "classifier.json"   # not config.json: models/*/config.json are U-Net presets
CLASSIFIER_WEIGHTS = "classifier.safetensors"
SPLIT_SEED = 0
HELDOUT_SIZE = 400
CONFIDENCE_THRESHOLD = 0.9
NUM_CLASSES = 10


# --- data --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Digits:
    """``*_x`` ``[N, 1, 16, 16]`` float32 in [-1, 1]; ``*_y`` ``[N]`` int64 class ids 0..9."""

    train_x: np.ndarray
    train_y: np.ndarray
    heldout_x: np.ndarray
    heldout_y: np.ndarray


def upscale2x(x: np.ndarray) -> np.ndarray:
    """Bilinear 2x upscaling of ``[..., H, W]`` with half-pixel centres and edge clamping.

    Output pixel ``2k`` is ``0.75 x[k] + 0.25 x[k-1]``, ``2k+1`` is ``0.75 x[k] + 0.25 x[k+1]``
    (indices clamped), per axis: what torch's ``interpolate(scale_factor=2, mode="bilinear",
    align_corners=False)`` computes.
    """

    def axis(a: np.ndarray, ax: int) -> np.ndarray:
        n = a.shape[ax]
        prev = np.take(a, np.clip(np.arange(n) - 1, 0, n - 1), axis=ax)
        nxt = np.take(a, np.clip(np.arange(n) + 1, 0, n - 1), axis=ax)
        even, odd = 0.75 * a + 0.25 * prev, 0.75 * a + 0.25 * nxt
        out = np.stack([even, odd], axis=ax + 1)
        return out.reshape(a.shape[:ax] + (2 * n,) + a.shape[ax + 1:])

    x = np.asarray(x, dtype=np.float64)
    return axis(axis(x, x.ndim - 2), x.ndim - 1)


def load_digits_split(heldout_size: int = HELDOUT_SIZE, seed: int = SPLIT_SEED) -> Digits:
    """scikit-learn's digits at 16x16 in [-1, 1], split into training and a stratified held-out set.

    The defaults are the split the shipped model and classifier were trained on; change them
    and the shipped reference figures no longer apply.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = upscale2x(data.images / 16.0) * 2.0 - 1.0          # [1797, 16, 16], 0..16 -> [-1, 1]
    x = images[:, None].astype(np.float32)
    y = data.target.astype(np.int64)
    train_idx, held_idx = train_test_split(np.arange(len(y)), test_size=heldout_size, stratify=y,
                                           random_state=seed)
    train_idx, held_idx = np.sort(train_idx), np.sort(held_idx)
    return Digits(x[train_idx], y[train_idx], x[held_idx], y[held_idx])


# --- the classifier, in numpy ------------------------------------------------------------
def _conv3x3_relu(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, Ci, H, W]`` -> ``[N, Co, H, W]``: 3x3 convolution, padding 1, then ReLU."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))   # [N, Ci, H, W, 3, 3]
    y = np.einsum("nchwij,ocij->nohw", win, w, optimize=True) + b[None, :, None, None]
    return np.maximum(y, 0.0)


def _maxpool2(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


class DigitClassifier:
    """``conv3x3(1->C1) ReLU maxpool2 -> conv3x3(C1->C2) ReLU maxpool2 -> flatten -> fc(F) ReLU -> fc(10)``.

    Weights (``classifier.safetensors``, written by ``tools/train_classifier.py``) carry
    torch's names and layouts: ``conv1.weight [C1, 1, 3, 3]``, ``fc1.weight [F, C2*4*4]``, ...
    The penultimate activations (after ``fc1`` and ReLU, ``[N, F]``) are the feature space
    of the Fréchet distance.
    """

    def __init__(self, weights: dict[str, np.ndarray], meta: dict, source: str | Path | None = None) -> None:
        self.w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.meta = meta
        self.name = str(source) if source is not None else "the digit classifier"  # errors name it

    @classmethod
    def load(cls, folder: str | Path = CLASSIFIER_DIR) -> "DigitClassifier":
        with export_extra_needed("the digit classifier"):  # its safetensors
            from safetensors.numpy import load_file

        folder = Path(folder)
        meta_path, weights_path = folder / CLASSIFIER_CONFIG, folder / CLASSIFIER_WEIGHTS
        for p in (meta_path, weights_path):
            if not p.is_file():
                raise InputNotFoundError(f"{p} not found; regenerate it with tools/train_classifier.py", p)
        try:
            weights = load_file(str(weights_path))
        except Exception as e:  # safetensors' SafetensorError derives from Exception only
            raise BadInputError(f"{weights_path}: not a readable safetensors file ({e}); regenerate it with "
                                f"tools/train_classifier.py") from e
        _check_weights(weights, weights_path)
        try:
            meta = parse_json(meta_path.read_text(encoding="utf-8"))
        except ValueError as e:  # UnicodeDecodeError too
            raise BadInputError(f"{meta_path}: not JSON ({e}); regenerate it with tools/train_classifier.py") from e
        return cls(weights, meta, folder)

    def forward(self, x: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """``x [N, 1, 16, 16]`` in [-1, 1] -> (features ``[N, F]``, logits ``[N, 10]``), float64."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (1, 16, 16):
            raise BadInputError(f"expected images [N, 1, 16, 16], got {x.shape}")
        feats, logits = [], []
        w = self.w
        for i in range(0, len(x), batch_size):
            h = _maxpool2(_conv3x3_relu(x[i:i + batch_size], w["conv1.weight"], w["conv1.bias"]))
            h = _maxpool2(_conv3x3_relu(h, w["conv2.weight"], w["conv2.bias"]))
            f = np.maximum(h.reshape(len(h), -1) @ w["fc1.weight"].T + w["fc1.bias"], 0.0)
            feats.append(f)
            logits.append(f @ w["fc2.weight"].T + w["fc2.bias"])
        return (np.concatenate(feats).astype(np.float64), np.concatenate(logits).astype(np.float64))

    def features(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[0]

    def probs(self, x: np.ndarray) -> np.ndarray:
        return _softmax(self.forward(x)[1])


def _check_weights(weights: dict[str, np.ndarray], path: Path) -> None:
    """Refuse weights that are not :class:`DigitClassifier`'s: a tensor missing or of the wrong
    shape (the layers' sizes are read from ``conv1``, ``conv2`` and ``fc1``), or not finite."""
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    c1, c2, f = (shapes.get(k, (0,))[0] for k in ("conv1.weight", "conv2.weight", "fc1.weight"))
    expected = {"conv1.weight": (c1, 1, 3, 3), "conv1.bias": (c1,), "conv2.weight": (c2, c1, 3, 3),
                "conv2.bias": (c2,), "fc1.weight": (f, c2 * 4 * 4), "fc1.bias": (f,),
                "fc2.weight": (NUM_CLASSES, f), "fc2.bias": (NUM_CLASSES,)}
    wrong = [f"{k} {list(shapes[k]) if k in shapes else 'missing'} (expected {list(v)})"
             for k, v in expected.items() if shapes.get(k) != v]
    if wrong:
        raise BadInputError(f"{path}: not the digit classifier's weights: {'; '.join(wrong)}; regenerate it with "
                            f"tools/train_classifier.py")
    bad = [k for k in expected if not np.isfinite(weights[k]).all()]
    if bad:
        raise BadInputError(f"{path}: {', '.join(bad)} hold NaN or infinite values; regenerate it with "
                            f"tools/train_classifier.py")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- Fréchet distance --------------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[F]`` and unbiased covariance ``[F, F]`` of ``features [N, F]`` in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise BadInputError(f"need features [N >= 2, F], got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((s + s.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)`` between N(mu1, S1) and N(mu2, S2).

    ``Tr (S1 S2)^1/2 = Tr (S1^1/2 S2 S1^1/2)^1/2``: the right side is symmetric PSD, so both
    roots come from ``eigh`` and the result is real even for singular covariances (scipy's
    ``sqrtm`` of the non-symmetric ``S1 S2``, as FID code uses, can return complex noise).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    r1 = _sqrt_psd(s1)
    vals = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = np.sqrt(np.clip(vals, 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_between(features_a: np.ndarray, features_b: np.ndarray) -> float:
    return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))


# --- scoring -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class QualityReport:
    """Metrics of one sample set; ``class_accuracy`` only when the intended labels were given."""

    num_samples: int
    confident_fraction: float
    class_entropy_bits: float
    frechet: float
    class_histogram: tuple[int, ...]
    class_accuracy: float | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["class_histogram"] = list(self.class_histogram)
        return d


def class_entropy_bits(predicted: np.ndarray) -> float:
    """Entropy in bits of the histogram of predicted class ids."""
    p = np.bincount(predicted, minlength=NUM_CLASSES) / len(predicted)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no "-0.0" for a single class


def score(samples: np.ndarray, classifier: DigitClassifier, reference: np.ndarray,
          labels: np.ndarray | None = None, threshold: float = CONFIDENCE_THRESHOLD) -> QualityReport:
    """Score ``samples [N, 1, 16, 16]`` against ``reference`` real images (the held-out digits).

    ``labels [N]``: the class each sample was asked for; adds the share predicted as asked.
    """
    feats, logits = classifier.forward(samples)
    probs = _softmax(logits)
    pred = probs.argmax(axis=1)
    return QualityReport(
        num_samples=len(samples),
        confident_fraction=float((probs.max(axis=1) > threshold).mean()),
        class_entropy_bits=class_entropy_bits(pred),
        frechet=frechet_between(feats, real_features(classifier, reference)),
        class_histogram=tuple(int(c) for c in np.bincount(pred, minlength=NUM_CLASSES)),
        class_accuracy=None if labels is None else float((pred == np.asarray(labels)).mean()),
    )


def reference_frechet(classifier: DigitClassifier, digits: Digits, n: int | None = None, seed: int = 0) -> float:
    """Fréchet distance of held-out real vs training real digits: the figure samples are judged by.

    The estimate is biased upwards by finite sample sizes, so compare like with like: with ``n``
    the training side is a seeded random subset of ``n`` images (use the number of generated
    samples); ``None`` takes the whole training split.
    """
    train = digits.train_x
    if n is not None and n < len(train):
        train = train[np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False))]
    return frechet_between(real_features(classifier, digits.heldout_x), classifier.features(train))


def real_features(classifier: DigitClassifier, real: np.ndarray) -> np.ndarray:
    """``classifier.features(real)``, refusing a degenerate classifier: one whose features are the
    same for every real image (e.g. all zero, every ReLU dead after training with too high an lr)
    puts every image at Fréchet distance 0 from the real ones, so no distance nor ratio means anything."""
    f = classifier.features(real)
    if len(f) >= 2 and not np.ptp(f, axis=0).any():
        same = "all zero" if not f.any() else "constant"
        raise BadInputError(f"{classifier.name}: a degenerate classifier: its {f.shape[1]} features are {same} over "
                            f"all {len(f)} real digits, so it tells no images apart (a Fréchet distance of 0 to "
                            f"anything); retrain it with tools/train_classifier.py (a lower --lr)")
    return f


def generate(backend, scheduler, labels: np.ndarray, *, seed: int, null_class: int,
             guidance_scale: float = 1.0, batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """Class-conditional samples ``[N, 1, 16, 16]`` for ``labels [N]`` through
    :func:`ddpm_export.diffusion.sample`, in batches; batch ``i`` uses seed ``seed + i``.

    With ``guidance_scale != 1`` every step also runs the ``null_class`` (classifier-free guidance).
    Any backend (torch, ONNX Runtime, ...) given the same arguments consumes the same noise.
    """
    from ddpm_export.diffusion import sample

    labels = np.asarray(labels, dtype=np.int64)
    batches = range(0, len(labels), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"sampling (guidance {guidance_scale:g})", unit="batch")
    out = []
    for i, start in enumerate(batches):
        c = labels[start:start + batch_size]
        guided = guidance_scale != 1.0
        out.append(sample(backend, scheduler, (len(c), 1, 16, 16), seed=seed + i, cond=c,
                          null_cond=np.full_like(c, null_class) if guided else None,
                          guidance_scale=guidance_scale))
    return np.concatenate(out)


# --- an ONNX Runtime backend for the sampling loop ---------------------------------------
def onnx_backend(path: str | Path, threads: int | None = None) -> OnnxRuntimeBackend:
    """The runtime's :class:`~ddpm_export.runtime.onnxruntime_backend.OnnxRuntimeBackend` on an
    exported file (its ExportSpec read from the metadata), with ``threads`` intra-op threads."""
    import onnxruntime as ort

    from ddpm_export.runtime import read_info
    from ddpm_export.runtime.onnxruntime_backend import OnnxRuntimeBackend

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return OnnxRuntimeBackend.from_path(path, read_info(path).spec, session_options=opts)
