"""The offline sample-quality metric (``ddpm_export.quality``) and the shipped digits model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddpm_export.diffusion import DiffusionConfig, make_scheduler
from ddpm_export.presets import MODELS_DIR, preset_names
from ddpm_export.quality import (DigitClassifier, Digits, class_entropy_bits, feature_stats, frechet_between,
                                 frechet_distance, generate, load_digits_split, reference_frechet, score,
                                 upscale2x)

DIGITS_MODEL = MODELS_DIR / "digits"


@pytest.fixture(scope="module")
def digits() -> Digits:
    return load_digits_split()


@pytest.fixture(scope="module")
def classifier() -> DigitClassifier:
    return DigitClassifier.load()


def noise_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal((n, 1, 16, 16)), -1, 1).astype(np.float32)


# --- data ------------------------------------------------------------------------------
def test_split_is_fixed_stratified_and_disjoint(digits):
    assert digits.train_x.shape == (1397, 1, 16, 16) and digits.heldout_x.shape == (400, 1, 16, 16)
    assert digits.train_x.dtype == np.float32 and digits.train_x.min() == -1.0 and digits.train_x.max() == 1.0
    counts = np.bincount(digits.heldout_y, minlength=10)
    assert counts.min() >= 38 and counts.max() <= 42, counts  # stratified: ~40 per class
    again = load_digits_split()
    np.testing.assert_array_equal(again.heldout_x, digits.heldout_x)
    # no held-out image is in the training split
    train = {x.tobytes() for x in digits.train_x}
    assert sum(x.tobytes() in train for x in digits.heldout_x) <= 2  # the data set has a few duplicates


def test_upscale2x_matches_bilinear_half_pixel():
    x = np.arange(4.0).reshape(1, 2, 2)
    # rows/cols: 0.75 * nearest + 0.25 * neighbour, edges clamped
    np.testing.assert_allclose(upscale2x(x)[0, 0], [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(upscale2x(x)[0, :, 0], [0.0, 0.5, 1.5, 2.0])


# --- the classifier --------------------------------------------------------------------
def test_classifier_is_accurate_and_confident_on_heldout_digits(classifier, digits):
    report = score(digits.heldout_x, classifier, digits.heldout_x, digits.heldout_y)
    assert report.class_accuracy >= 0.97
    assert report.confident_fraction >= 0.9
    assert report.class_entropy_bits > 3.3  # balanced: log2(10) = 3.32


def test_classifier_is_not_confident_on_noise(classifier, digits):
    rng = np.random.default_rng(1)
    for images in (noise_images(400), rng.uniform(-1, 1, (400, 1, 16, 16)).astype(np.float32)):
        assert score(images, classifier, digits.heldout_x).confident_fraction <= 0.05


def test_classifier_folder_is_not_a_unet_preset():
    assert "digit-classifier" not in preset_names()
    assert not (MODELS_DIR / "digit-classifier" / "config.json").exists()


def _broken_classifier(folder, how: str):
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(MODELS_DIR / "digit-classifier", folder)
    weights_path = folder / "classifier.safetensors"
    weights = load_file(str(weights_path))
    if how == "truncated":
        weights_path.write_bytes(weights_path.read_bytes()[:5000])
    elif how == "json":
        (folder / "classifier.json").write_text("{")
    elif how == "missing":
        del weights["fc2.bias"]
        save_file(weights, str(weights_path))
    elif how == "shape":
        weights["fc1.weight"] = weights["fc1.weight"][:, :100].copy()
        save_file(weights, str(weights_path))
    elif how == "dead":  # finite, loadable, every fc1 ReLU dead: what train_classifier.py --lr 1e4 wrote
        weights["fc1.bias"][:] = -1e6
        save_file(weights, str(weights_path))
    else:
        weights["conv1.bias"][0] = np.nan
        save_file(weights, str(weights_path))


@pytest.mark.parametrize(("how", "message"), [
    ("truncated", "classifier.safetensors: not a readable safetensors file"),
    ("json", "classifier.json: not JSON"),
    ("missing", "classifier.safetensors: not the digit classifier's weights: fc2.bias missing (expected [10])"),
    ("shape", "fc1.weight [64, 100] (expected [64, 512])"),
    ("nan", "classifier.safetensors: conv1.bias hold NaN or infinite values"),
])
def test_a_broken_classifier_folder_is_refused_naming_the_file(tmp_path, how, message):
    """Each ended in a traceback from safetensors, json or numpy (a KeyError at the first batch;
    NaN weights scored every sample as unconfident) in tools/quality.py --classifier."""
    from ddpm_export.errors import BadInputError

    _broken_classifier(tmp_path / "clf", how)
    with pytest.raises(BadInputError) as info:
        DigitClassifier.load(tmp_path / "clf")
    assert message in str(info.value) and "tools/train_classifier.py" in str(info.value)


def test_a_degenerate_classifier_is_refused_naming_its_folder(tmp_path, digits):
    """Features all zero put every image at Fréchet distance 0 from the real digits: quality.py ended
    in a ZeroDivisionError traceback (its FD / reference FD); score and reference_frechet now refuse it."""
    from ddpm_export.errors import BadInputError

    _broken_classifier(tmp_path / "clf", "dead")
    clf = DigitClassifier.load(tmp_path / "clf")
    assert not clf.features(digits.heldout_x).any()
    for call in (lambda: score(noise_images(8), clf, digits.heldout_x), lambda: reference_frechet(clf, digits)):
        with pytest.raises(BadInputError) as info:
            call()
        assert str(info.value).startswith(f"{tmp_path / 'clf'}: a degenerate classifier: its 64 features are all "
                                          f"zero over all 400 real digits"), info.value


# --- Fréchet distance ------------------------------------------------------------------
def test_frechet_distance_hand_computed():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) \
        == pytest.approx(4.0 + 1.0)
    # diagonal: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = 1.0 + 0.0 + 4.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
    # the same rotated into a non-diagonal basis (S1 and S2 share eigenvectors)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    assert frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T) == pytest.approx(expected)
    # non-commuting 2x2: S1 = diag(1, 4), S2 = [[2, 1], [1, 2]], (S1 S2)^1/2 by hand:
    # Tr sqrt(M) for a 2x2 M with positive eigenvalues is sqrt(tr M + 2 sqrt(det M))
    s1, s2 = np.diag([1.0, 4.0]), np.array([[2.0, 1.0], [1.0, 2.0]])
    m = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    assert frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(5 + 4 - 2 * tr_sqrt)
    # identical Gaussians: 0
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-12)


def test_frechet_of_samples_approaches_the_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (20000, 2))
    y = rng.normal([3.0, 0.0], [2.0, 1.0], (20000, 2))
    assert frechet_between(x, y) == pytest.approx(9.0 + 1.0, rel=0.03)
    mu, cov = feature_stats(y)
    np.testing.assert_allclose(mu, [3.0, 0.0], atol=0.05)
    np.testing.assert_allclose(cov, np.diag([4.0, 1.0]), atol=0.1)


def test_frechet_small_for_real_vs_real_large_for_noise(classifier, digits):
    real = reference_frechet(classifier, digits)
    noise = score(noise_images(400), classifier, digits.heldout_x).frechet
    assert 0 < real < 10
    assert noise > 30 * real


def test_class_entropy_bits():
    assert class_entropy_bits(np.arange(1000) % 10) == pytest.approx(math.log2(10))
    assert class_entropy_bits(np.zeros(10, dtype=np.int64)) == 0.0
    assert class_entropy_bits(np.array([0, 1])) == pytest.approx(1.0)


# --- the shipped model -----------------------------------------------------------------
@pytest.mark.slow
def test_digits_checkpoint_samples_recognisable_digits(classifier, digits):
    """The shipped sampler defaults (UniPC, 10 steps), 64 samples, no guidance; noise scores 0."""
    pytest.importorskip("torch")
    from ddpm_export import load_model
    from ddpm_export.nn.checkpoint import diffusion_config_for
    from ddpm_export.torch_backend import TorchBackend

    dcfg = diffusion_config_for(DIGITS_MODEL)
    assert dcfg is not None and dcfg.sampler == "unipc" and dcfg.num_inference_steps == 10
    assert "digits" in preset_names()
    model = load_model(DIGITS_MODEL)
    assert model.config.num_classes == 10 and model.config.null_class
    scheduler = make_scheduler(dcfg)
    labels = np.arange(64) % 10
    samples = generate(TorchBackend(model), scheduler, labels, seed=0, null_class=10, batch_size=64)
    report = score(samples, classifier, digits.heldout_x, labels)
    assert report.confident_fraction >= 0.7, report
    assert report.class_accuracy >= 0.7, report


@pytest.mark.slow
def test_onnxruntime_and_torch_samples_score_the_same(tmp_path, classifier, digits):
    """The same seeds through ONNX Runtime and PyTorch: samples agree to 1e-4, metrics to 1e-3."""
    pytest.importorskip("torch")
    from ddpm_export import load_model
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.quality import onnx_backend
    from ddpm_export.torch_backend import TorchBackend

    export_onnx(DIGITS_MODEL, tmp_path / "digits.onnx", max_batch=32, log=lambda s: None)
    scheduler = make_scheduler(DiffusionConfig(num_inference_steps=10))
    labels = np.arange(20) % 10
    kw = dict(seed=3, null_class=10, guidance_scale=2.0, batch_size=10)
    a = generate(TorchBackend(load_model(DIGITS_MODEL)), scheduler, labels, **kw)
    b = generate(onnx_backend(tmp_path / "digits.onnx", threads=1), scheduler, labels, **kw)
    assert np.abs(a - b).max() < 1e-4
    ra, rb = score(a, classifier, digits.heldout_x, labels), score(b, classifier, digits.heldout_x, labels)
    assert ra.class_histogram == rb.class_histogram and ra.class_accuracy == rb.class_accuracy
    assert ra.confident_fraction == rb.confident_fraction
    assert ra.frechet == pytest.approx(rb.frechet, rel=1e-3)


@pytest.mark.slow
def test_metric_needs_no_torch():
    """The classifier and the metric run with torch unimportable (numpy + safetensors)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError(f"torch is blocked ({name})")
        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        from ddpm_export.quality import DigitClassifier, load_digits_split, score
        d = load_digits_split()
        r = score(d.heldout_x[:100], DigitClassifier.load(), d.heldout_x, d.heldout_y[:100])
        assert r.class_accuracy > 0.9, r
        assert "torch" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
