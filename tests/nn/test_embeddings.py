"""Timestep and class embeddings (``ddpm_export.nn.embeddings``) against CONVENTIONS.md.

References: the formula written out in numpy float64, and diffusers' ``get_timestep_embedding``.
Tolerance against float64: 1e-4. The argument ``t * freq`` is computed in float32 (as the
conventions require), so its rounding error is about ``t * 2**-24`` rad; at t = 999 that
bounds the error of sin / cos near 6e-5 (measured: 5.6e-5 at dim 512).
Against diffusers (same float32 operations) the result is bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ddpm_export.config import UNetConfig  # noqa: E402
from ddpm_export.nn.embeddings import ClassEmbedding, TimeEmbedding, timestep_embedding  # noqa: E402

TOL_FLOAT64 = 1e-4
TIMESTEPS = [0, 1, 937, 999]
CONVENTIONS = [  # (flip_sin_to_cos, freq_shift)
    pytest.param(True, 0.0, id="cos-sin-openai"),
    pytest.param(False, 1.0, id="sin-cos-ddpm"),
    pytest.param(True, 1.0, id="cos-sin-shift1"),
    pytest.param(False, 0.0, id="sin-cos-shift0"),
]
DIMS = [16, 17, 128, 512]


def reference_embedding(t, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                        max_period: float = 10000.0) -> np.ndarray:
    """CONVENTIONS.md in float64: freqs[i] = exp(-ln(max_period) i / (half - shift)), arg = t freqs."""
    half = dim // 2
    i = np.arange(half, dtype=np.float64)
    freqs = np.exp(-np.log(max_period) * i / (half - freq_shift))
    arg = np.asarray(t, dtype=np.float64)[:, None] * freqs[None, :]
    parts = [np.cos(arg), np.sin(arg)] if flip_sin_to_cos else [np.sin(arg), np.cos(arg)]
    emb = np.concatenate(parts, axis=1)
    if dim % 2 == 1:
        emb = np.concatenate([emb, np.zeros((len(emb), 1))], axis=1)
    return emb


def _ours(t, dim, flip, shift, max_period=10000.0):
    return timestep_embedding(torch.as_tensor(t), dim, flip_sin_to_cos=flip, freq_shift=shift,
                              max_period=max_period)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("flip,shift", CONVENTIONS)
def test_sinusoid_matches_the_float64_formula(dim, flip, shift):
    out = _ours(torch.tensor(TIMESTEPS), dim, flip, shift)
    assert out.dtype == torch.float32 and out.shape == (len(TIMESTEPS), dim)
    ref = reference_embedding(TIMESTEPS, dim, flip, shift)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=TOL_FLOAT64)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("flip,shift", CONVENTIONS)
def test_sinusoid_equals_diffusers(dim, flip, shift):
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor(TIMESTEPS)
    ref = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift, max_period=10000)
    assert torch.equal(_ours(t, dim, flip, shift), ref)


def test_sinusoid_hand_values():
    """A few entries by hand: t = 0 gives [1..1, 0..0] ([cos, sin]); freq 0 is 1 so column 0 is cos(t)."""
    out = _ours(torch.tensor([0, 1, 937]), 8, True, 0.0)
    assert torch.equal(out[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    assert out[1, 0].item() == pytest.approx(np.cos(1.0), abs=1e-7)
    assert out[1, 4].item() == pytest.approx(np.sin(1.0), abs=1e-7)
    # freq[1] = exp(-ln(1e4) / 4) = 0.1 -> sin(93.7)
    assert out[2, 5].item() == pytest.approx(np.sin(93.7), abs=1e-5)
    # DDPM convention: [sin, cos], freqs divided by (half - 1)
    out = _ours(torch.tensor([1]), 8, False, 1.0)
    assert out[0, 1].item() == pytest.approx(np.sin(10000 ** (-1 / 3)), abs=1e-7)
    assert out[0, 4].item() == pytest.approx(np.cos(1.0), abs=1e-7)


def test_odd_dim_is_zero_padded():
    out = _ours(torch.tensor(TIMESTEPS), 17, True, 0.0)
    assert torch.equal(out[:, -1], torch.zeros(len(TIMESTEPS)))
    assert torch.equal(out[:, :16], _ours(torch.tensor(TIMESTEPS), 16, True, 0.0))


@pytest.mark.parametrize("t_dtype", [torch.int64, torch.int32, torch.float32])
def test_t_937_stays_937(t_dtype):
    """The argument is float32: 937 is not rounded to 936 or 940 as bf16 would."""
    out = _ours(torch.tensor([937], dtype=t_dtype), 128, True, 0.0).numpy()
    np.testing.assert_allclose(out, reference_embedding([937], 128, True, 0.0), rtol=0, atol=TOL_FLOAT64)
    for wrong in (936, 940):  # bf16(937) = 936
        assert np.abs(out - reference_embedding([wrong], 128, True, 0.0)).max() > 0.1
    assert torch.tensor([937.0]).to(torch.bfloat16).item() != 937  # why the dtype matters


def _mlp64(e: np.ndarray, emb: TimeEmbedding) -> np.ndarray:
    """Linear -> SiLU -> Linear in float64 with the module's weights."""
    w1, b1 = (p.detach().double().numpy() for p in (emb.linear_1.weight, emb.linear_1.bias))
    w2, b2 = (p.detach().double().numpy() for p in (emb.linear_2.weight, emb.linear_2.bias))
    h = e @ w1.T + b1
    h = h / (1 + np.exp(-h))
    return h @ w2.T + b2


def _time_embedding(kind: str, dtype=torch.float32, **overrides) -> TimeEmbedding:
    cfg = UNetConfig(base_channels=16, channel_mult=(1,), sample_size=8, num_groups=4,
                     attention_resolutions=(), time_embedding=kind, **overrides)
    torch.manual_seed(0)
    return TimeEmbedding(cfg).to(dtype).eval()


@pytest.mark.parametrize("flip,shift", CONVENTIONS[:2])
def test_sinusoidal_time_embedding_is_mlp_of_pe(flip, shift):
    emb = _time_embedding("sinusoidal", flip_sin_to_cos=flip, freq_shift=shift)
    t = torch.tensor(TIMESTEPS)
    with torch.no_grad():
        out = emb(t)
    assert out.shape == (4, 64) and out.dtype == torch.float32
    ref = _mlp64(reference_embedding(TIMESTEPS, 16, flip, shift), emb)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-4)


def test_learned_time_embedding_is_a_gather_of_the_table():
    emb = _time_embedding("learned", num_train_timesteps=1000)
    assert emb.table.weight.shape == (1000, 16)
    t = torch.tensor(TIMESTEPS)
    with torch.no_grad():
        out = emb(t)
    rows = emb.table.weight.detach().double().numpy()[TIMESTEPS]
    np.testing.assert_allclose(out.numpy(), _mlp64(rows, emb), rtol=0, atol=1e-5)
    with pytest.raises(IndexError):
        emb(torch.tensor([1000]))


def test_hybrid_time_embedding_is_pe_plus_mlp_of_pe():
    """hybrid: PE_4C0(t) + MLP'(PE_4C0(t)), the sinusoid at the MLP's width (64 for C0 = 16)."""
    emb = _time_embedding("hybrid")
    assert emb.linear_1.in_features == 64
    with torch.no_grad():
        out = emb(torch.tensor(TIMESTEPS))
    pe = reference_embedding(TIMESTEPS, 64, True, 0.0)
    np.testing.assert_allclose(out.numpy(), pe + _mlp64(pe, emb), rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind, pe_dim", [("sinusoidal", 9), ("hybrid", 36)])
def test_an_odd_base_width_is_accepted_and_embedded(kind, pe_dim):
    """C0 = 9 was refused ("the sinusoidal embedding needs an even base_channels"), though the
    sinusoid pads an odd width with a zero column as diffusers does, and hybrid's is 4 C0."""
    cfg = UNetConfig(base_channels=9, channel_mult=(1,), sample_size=8, num_groups=3, attention_resolutions=(),
                     mid_attention=False, time_embedding=kind)
    torch.manual_seed(0)
    emb = TimeEmbedding(cfg).eval()
    with torch.no_grad():
        out = emb(torch.tensor(TIMESTEPS))
    assert out.shape == (len(TIMESTEPS), 36)
    pe = reference_embedding(TIMESTEPS, pe_dim, True, 0.0)
    np.testing.assert_allclose(out.numpy(), _mlp64(pe, emb) + (pe if kind == "hybrid" else 0), rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", ["sinusoidal", "learned", "hybrid"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_time_embedding_computes_in_float32_in_a_low_precision_model(kind, dtype):
    low = _time_embedding(kind, dtype=dtype)
    full = _time_embedding(kind)
    full.load_state_dict({k: v.float() for k, v in low.state_dict().items()})  # same (rounded) weights
    t = torch.tensor(TIMESTEPS)
    with torch.no_grad():
        out = low(t)
        assert out.dtype == torch.float32
        assert torch.equal(out, full(t))


@pytest.mark.parametrize("null_class", [True, False])
def test_class_embedding_rows(null_class):
    torch.manual_seed(0)
    rows = 5 + int(null_class)
    emb = ClassEmbedding(rows, 12)
    labels = torch.tensor([0, 4, rows - 1])
    assert torch.equal(emb(labels), emb.table.weight.detach()[labels])
