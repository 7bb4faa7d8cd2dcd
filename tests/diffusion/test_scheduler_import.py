"""A diffusers folder's scheduler config becomes the exported file's schedule.

Real diffusers schedulers, saved with ``save_pretrained`` and read back by diffusers itself, are
the reference: the schedule ``abar_t`` and the timesteps of the sampler each maps to must equal
diffusers' own (timesteps exactly; ``abar`` to float32 rounding, rtol 1e-6). A cosine /
v-prediction model used to be exported with the default linear / epsilon schedule, and verify
passed, since both sides shared the wrong one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from ddpm_export.diffusion import Schedule, make_scheduler  # noqa: E402
from ddpm_export.diffusion.from_diffusers import (SCHEDULER_CONFIG_NAME, SchedulerConfigError,  # noqa: E402
                                                  diffusion_from_scheduler)

CASES = {  # name: (diffusers class, its arguments, the sampler it maps to)
    "ddpm-cosine-v": ("DDPMScheduler", dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                            clip_sample=False, variance_type="fixed_small_log"), "ddim"),
    "ddim-scaled-linear": ("DDIMScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                 set_alpha_to_one=False, steps_offset=1, clip_sample=False), "ddim"),
    "dpm++-karras": ("DPMSolverMultistepScheduler", dict(solver_order=3, use_karras_sigmas=True), "dpm-solver++"),
    "dpm-trailing": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min",
                                                         timestep_spacing="trailing", num_train_timesteps=500),
                     "dpm-solver"),
    "unipc-bh1-cosine": ("UniPCMultistepScheduler", dict(solver_type="bh1", beta_schedule="squaredcos_cap_v2"),
                         "unipc"),
    "pndm": ("PNDMScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                   skip_prk_steps=True), "ddim"),
    "euler": ("EulerDiscreteScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
              "ddim"),
    "unipc-offset-ignored": ("UniPCMultistepScheduler", dict(steps_offset=1), "unipc"),  # diffusers ignores it
}


def _saved(folder: Path, cls: str, kwargs: dict) -> tuple[Path, object]:
    """``cls(**kwargs)`` saved with save_pretrained; the config file and diffusers' own reload of it."""
    getattr(diffusers, cls)(**kwargs).save_pretrained(folder)
    return folder / SCHEDULER_CONFIG_NAME, getattr(diffusers, cls).from_pretrained(folder)


@pytest.mark.parametrize("case", list(CASES))
def test_a_saved_scheduler_maps_to_the_same_schedule_and_timesteps(tmp_path: Path, case: str) -> None:
    cls, kwargs, sampler = CASES[case]
    path, ref = _saved(tmp_path, cls, kwargs)
    cfg = diffusion_from_scheduler(path)
    assert cfg.sampler == sampler and cfg.num_train_timesteps == kwargs.get("num_train_timesteps", 1000)
    np.testing.assert_allclose(Schedule.from_config(cfg).alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6)
    if sampler != "ddim" or cls == "DDIMScheduler":  # a sampler this package runs
        ref.set_timesteps(20)
        np.testing.assert_array_equal(make_scheduler(cfg, num_inference_steps=20).timesteps, ref.timesteps.numpy())
    if cls == "DDPMScheduler":
        assert (cfg.prediction_type, cfg.clip_sample, cfg.variance_type) == ("v_prediction", False, "fixed_small")


@pytest.mark.parametrize("cls,T,steps", [("DDPMScheduler", 20, 20), ("DDIMScheduler", 40, 40),
                                          ("UniPCMultistepScheduler", 20, 19),  # linspace: 20 repeats a timestep
                                          ("DPMSolverMultistepScheduler", 2, 2)])
def test_a_schedule_of_fewer_than_50_timesteps_samples_with_the_most_steps_it_takes(
        tmp_path: Path, cls: str, T: int, steps: int) -> None:
    """A scheduler file holds no step count, and the default 50 exceeds T < 50: a T = 20 file was refused
    for a num_inference_steps it does not hold. It takes the most steps its sampler can, as diffusers
    visits them."""
    path, ref = _saved(tmp_path, cls, dict(num_train_timesteps=T))
    cfg = diffusion_from_scheduler(path)
    assert (cfg.num_train_timesteps, cfg.num_inference_steps) == (T, steps)
    if cls != "DDPMScheduler":  # its sampler is DDIM's (as for T >= 50)
        ref.set_timesteps(steps)
        np.testing.assert_array_equal(make_scheduler(cfg).timesteps, ref.timesteps.numpy())
    with pytest.raises(SchedulerConfigError, match="beta_end: must be >= beta_start"):  # other errors still named
        diffusion_from_scheduler(_saved(tmp_path / "bad", cls, dict(num_train_timesteps=T, beta_start=0.02,
                                                                         beta_end=0.01))[0])


def test_keys_a_file_leaves_out_take_that_class_s_defaults(tmp_path: Path) -> None:
    """diffusers' DPM-Solver defaults to linspace spacing, DiffusionConfig to leading."""
    path = tmp_path / SCHEDULER_CONFIG_NAME
    data = {"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "squaredcos_cap_v2"}
    path.write_text(json.dumps(data))
    cfg = diffusion_from_scheduler(path)
    ref = diffusers.DPMSolverMultistepScheduler.from_config(data)
    ref.set_timesteps(10)
    assert cfg.timestep_spacing == "linspace"
    np.testing.assert_array_equal(make_scheduler(cfg, num_inference_steps=10).timesteps, ref.timesteps.numpy())


@pytest.mark.parametrize(("data", "match"), [
    ({"_class_name": "DDPMScheduler", "trained_betas": [0.1, 0.2]}, r"trained_betas=\[0.1, 0.2\] is not supported"),
    ({"_class_name": "DDPMScheduler", "thresholding": True}, r"thresholding=True is not supported"),
    ({"_class_name": "DDIMScheduler", "rescale_betas_zero_snr": True}, r"rescale_betas_zero_snr=True is not supp"),
    ({"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid"},
     r"beta_schedule='sigmoid' is not supported \(choose one of: linear, scaled_linear, squaredcos_cap_v2\)"),
    ({"_class_name": "DDPMScheduler", "variance_type": "learned_range"}, r"variance_type='learned_range' is not"),
    # a list or object where a name belongs: a TypeError traceback (unhashable), exit 1
    ({"_class_name": "DDPMScheduler", "beta_schedule": ["linear"]}, r"beta_schedule=\['linear'\] is not supported"),
    ({"_class_name": "DDIMScheduler", "variance_type": ["fixed_small"]}, r"variance_type=\['fixed_small'\] of DDIM"),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": {"a": 1}}, r"algorithm_type=\{'a': 1\} is not"),
    # accepted and ignored, then every sample failed on the 2C-channel output (diffusers slices it)
    ({"_class_name": "DPMSolverMultistepScheduler", "variance_type": "learned_range"},
     r"variance_type='learned_range' of DPMSolverMultistepScheduler is not supported"),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver"},
     r"algorithm_type='sde-dpmsolver' is not supported"),
    # read as its beta schedule, sampled with integer t: diffusers feeds this model 0.25 * log(sigma)
    ({"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous", "prediction_type": "v_prediction"},
     r"timestep_type='continuous' with prediction_type='v_prediction' is not supported \(the model takes 0.25"),
    ({"_class_name": "DDPMScheduler", "new_knob": 1}, r"new_knob=1 is a scheduler setting this version does not know"),
    ({"_class_name": "DDPMScheduler", "beta_start": 2.0}, r"beta_start: must be in \(0, 1\), got 2.0"),
    ([1, 2], r"a scheduler config is a JSON object, got list"),
])
def test_what_the_schedule_cannot_express_is_refused_by_key(tmp_path: Path, data: object, match: str) -> None:
    path = tmp_path / SCHEDULER_CONFIG_NAME
    path.write_text(json.dumps(data))
    with pytest.raises(SchedulerConfigError, match=match) as info:
        diffusion_from_scheduler(path)
    assert isinstance(data, list) or "write a diffusion.json" in str(info.value)


def test_each_read_class_s_defaults_are_diffusers_own() -> None:
    """For keys an (old) file leaves out, each class read takes diffusers' default, where it differs
    from DiffusionConfig's: Heun and KDPM2 took betas 1e-4..0.02 (theirs 0.00085..0.012), Euler
    Ancestral and LMS leading spacing (theirs linspace)."""
    import inspect

    from ddpm_export.diffusion import DiffusionConfig
    from ddpm_export.diffusion.from_diffusers import _CLASS_DEFAULTS

    ours = DiffusionConfig()
    for cls, defaults in _CLASS_DEFAULTS.items():
        params = inspect.signature(getattr(diffusers, cls).__init__).parameters
        differ = {k: params[k].default for k in ("beta_start", "beta_end", "timestep_spacing", "set_alpha_to_one",
                                                  "steps_offset", "prediction_type", "num_train_timesteps")
                  if k in params and params[k].default != getattr(ours, k)}
        assert defaults == differ, cls


@pytest.mark.parametrize(("data", "match"), [
    ({"beta_start": 0.001}, r"names no _class_name \(known: DDPMScheduler, DDIMScheduler, "),
    ({"_class_name": "IPNDMScheduler"}, r"_class_name='IPNDMScheduler' is not a scheduler class ddpm-export reads"),
    ({"_class_name": None}, r"names no _class_name"),
    ({"_class_name": ["DDPMScheduler"]}, r"_class_name=\['DDPMScheduler'\] is not a scheduler class"),
])
def test_a_file_of_no_class_read_here_is_refused(tmp_path: Path, data: dict, match: str) -> None:
    """It was read as a DDIM schedule: IPNDM's own schedule as linear betas, a file without a class
    as DDIM with linspace spacing."""
    path = tmp_path / SCHEDULER_CONFIG_NAME
    path.write_text(json.dumps(data))
    with pytest.raises(SchedulerConfigError, match=match):
        diffusion_from_scheduler(path)


def test_only_ddpm_and_ddim_clip_by_default(tmp_path: Path) -> None:
    """Euler, PNDM, DPM-Solver, UniPC steps never clip x0; read as clip_sample=True (DiffusionConfig's
    default), an Euler model sampled with our DDIM moved by 0.66. DDPM and DDIM default to True."""
    path = tmp_path / SCHEDULER_CONFIG_NAME
    for cls, clips in (("EulerDiscreteScheduler", False), ("PNDMScheduler", False), ("UniPCMultistepScheduler", False),
                       ("DDIMScheduler", True), ("DDPMScheduler", True)):
        path.write_text(json.dumps({"_class_name": cls}))
        assert diffusion_from_scheduler(path).clip_sample is clips, cls
        assert getattr(getattr(diffusers, cls)(), "config").get("clip_sample", False) is clips  # diffusers' own
    path.write_text(json.dumps({"_class_name": "EulerDiscreteScheduler", "clip_sample": True}))
    assert diffusion_from_scheduler(path).clip_sample is True  # what a file says wins


def test_a_scheduler_swap_s_carried_over_variance_type_is_read(tmp_path: Path) -> None:
    """`pipe.scheduler = DDIMScheduler.from_config(ddpm_config)` keeps DDPM's variance_type in the
    saved config: diffusers samples it; it was refused as a learned variance."""
    ddpm = diffusers.DDPMScheduler(variance_type="fixed_large", beta_schedule="squaredcos_cap_v2")
    for cls in ("DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
        folder = tmp_path / cls
        getattr(diffusers, cls).from_config(ddpm.config).save_pretrained(folder)
        assert json.loads((folder / SCHEDULER_CONFIG_NAME).read_text())["variance_type"] == "fixed_large"
        cfg = diffusion_from_scheduler(folder / SCHEDULER_CONFIG_NAME)
        assert (cfg.variance_type, cfg.beta_schedule) == ("fixed_large", "cosine"), cls


def test_a_pipeline_s_scheduler_is_found_from_inside_its_unet_folder(tmp_path: Path, monkeypatch) -> None:
    """`--model .` in <pipeline>/unet: Path('.').parent is '.', so ../scheduler was missed and the
    default schedule recorded without a word."""
    from ddpm_export.diffusion.from_diffusers import find_scheduler_config

    diffusers.DDPMScheduler().save_pretrained(tmp_path / "pipe" / "scheduler")
    (tmp_path / "pipe" / "unet").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "pipe" / "unet")
    want = tmp_path / "pipe" / "scheduler" / SCHEDULER_CONFIG_NAME
    monkeypatch.chdir(tmp_path / "pipe" / "unet")
    assert find_scheduler_config(Path(".")).resolve() == want
    assert find_scheduler_config(tmp_path / "link").resolve() == want


@pytest.mark.parametrize(("data", "match"), [
    ({"_class_name": "UniPCMultistepScheduler", "disable_corrector": None},
     r"disable_corrector=None is not a list of step indices"),  # was a TypeError traceback
    ({"_class_name": "DDPMScheduler", "trained_betas": [0.001] * 1000},
     r"trained_betas=\[1000 values: 0.001, 0.001, ..., 0.001\] is not supported"),  # printed 22,000 characters
])
def test_a_bad_value_is_named_in_a_short_message(tmp_path: Path, data: dict, match: str) -> None:
    path = tmp_path / SCHEDULER_CONFIG_NAME
    path.write_text(json.dumps(data))
    with pytest.raises(SchedulerConfigError, match=match) as info:
        diffusion_from_scheduler(path)
    assert len(str(info.value)) < 400


OLD_DDPM = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.3.0", "beta_end": 0.02, "beta_schedule": "linear",
            "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000, "tensor_format": "pt",
            "trained_betas": None, "variance_type": "fixed_small"}


@pytest.mark.parametrize(("extra", "prediction_type"), [
    ({}, "epsilon"), ({"predict_epsilon": True}, "epsilon"), ({"predict_epsilon": False}, "sample"),
    ({"predict_epsilon": False, "prediction_type": "sample"}, "sample"),  # 0.10 wrote both
])
def test_an_old_file_s_keys_are_read_as_those_versions_did(tmp_path: Path, extra: dict, prediction_type: str) -> None:
    """diffusers 0.3-0.11 saved `tensor_format` (pt / np) and 0.7-0.11 `predict_epsilon` (0.10's
    DDPMScheduler: `prediction_type="epsilon" if predict_epsilon else "sample"`); both were refused
    as unknown keys. diffusers today drops them, sampling such an x0 model as epsilon."""
    path = tmp_path / SCHEDULER_CONFIG_NAME
    path.write_text(json.dumps({**OLD_DDPM, **extra}))
    cfg = diffusion_from_scheduler(path)
    assert (cfg.prediction_type, cfg.beta_schedule, cfg.variance_type, cfg.clip_sample) == (
        prediction_type, "linear", "fixed_small", True)


@pytest.mark.parametrize(("extra", "match"), [
    ({"predict_epsilon": False, "prediction_type": "epsilon"},
     r"predict_epsilon=False contradicts prediction_type='epsilon' \(predict_epsilon=false means 'sample'\)"),
    ({"predict_epsilon": "yes"}, r"predict_epsilon='yes' is not true or false"),
])
def test_an_old_file_s_predict_epsilon_that_cannot_be_read_is_named(tmp_path: Path, extra: dict, match: str) -> None:
    path = tmp_path / SCHEDULER_CONFIG_NAME
    path.write_text(json.dumps({**OLD_DDPM, **extra}))
    with pytest.raises(SchedulerConfigError, match=match):
        diffusion_from_scheduler(path)


def test_a_file_that_is_not_utf8_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / SCHEDULER_CONFIG_NAME
    path.write_bytes(json.dumps({"_class_name": "DDPMScheduler"}).encode("utf-16"))
    with pytest.raises(SchedulerConfigError, match=r"scheduler_config.json: not a readable UTF-8 JSON file"):
        diffusion_from_scheduler(path)


def test_a_key_given_twice_is_named(tmp_path: Path) -> None:
    """json keeps the last of two keys silently: an edited beta_end above the old one was ignored."""
    path = tmp_path / SCHEDULER_CONFIG_NAME
    path.write_text('{"_class_name": "DDPMScheduler", "beta_end": 0.03, "beta_end": 0.02}')
    with pytest.raises(SchedulerConfigError, match=r"scheduler_config.json: not a readable UTF-8 JSON file "
                                                   r"\(key 'beta_end' is given twice\)"):
        diffusion_from_scheduler(path)


SMALL_UNET = dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                  down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"))


def test_a_pipeline_folder_s_scheduler_reaches_the_exported_file(tmp_path: Path) -> None:
    from ddpm_export.diffusion import DiffusionConfig
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.runtime.info import read_info

    torch.manual_seed(0)
    diffusers.UNet2DModel(**SMALL_UNET).save_pretrained(tmp_path / "pipe" / "unet")
    diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                            clip_sample=False).save_pretrained(tmp_path / "pipe" / "scheduler")
    lines: list[str] = []
    out = export_onnx(tmp_path / "pipe" / "unet", tmp_path / "m.onnx", max_batch=2, validate=False, log=lines.append)
    got = read_info(out.path).diffusion
    assert (got.beta_schedule, got.prediction_type, got.clip_sample) == ("cosine", "v_prediction", False)
    assert any(line.startswith(f"schedule from {tmp_path / 'pipe' / 'scheduler' / SCHEDULER_CONFIG_NAME}: cosine "
                               f"betas, T=1000, v_prediction prediction") for line in lines), lines
    # a diffusion.json beside the UNet's config takes precedence
    (tmp_path / "pipe" / "unet" / "diffusion.json").write_text(DiffusionConfig(beta_end=0.03).to_json())
    out = export_onnx(tmp_path / "pipe" / "unet", tmp_path / "m2.onnx", max_batch=2, validate=False, log=lambda s: None)
    assert read_info(out.path).diffusion.beta_end == 0.03
    # a class whose sampler does not run here says so (the docs did; the export line said only "sampler ddim")
    (tmp_path / "pipe" / "unet" / "diffusion.json").unlink()
    diffusers.EulerDiscreteScheduler().save_pretrained(tmp_path / "pipe" / "scheduler")
    assert not any("own sampler" in line for line in lines)  # DDPM's sampler runs here (--sampler ddpm)
    lines.clear()
    export_onnx(tmp_path / "pipe" / "unet", tmp_path / "m3.onnx", max_batch=2, validate=False, log=lines.append)
    assert any(line.endswith("sampler ddim, 50 steps (EulerDiscreteScheduler's own sampler does not run here: its "
                             "schedule is sampled with ddim by default; `sample --sampler` picks another)")
               for line in lines), lines


def test_a_positional_unet_takes_its_timestep_count_from_its_scheduler(tmp_path: Path) -> None:
    """diffusers writes num_train_timesteps null for a positional UNet; DDPMPipeline samples it
    with a T=4000 scheduler. It was refused: 'the schedule's 4000 differs from the model's 1000'."""
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.runtime.info import read_info

    torch.manual_seed(0)
    diffusers.UNet2DModel(**SMALL_UNET).save_pretrained(tmp_path / "pipe" / "unet")
    assert json.loads((tmp_path / "pipe" / "unet" / "config.json").read_text())["num_train_timesteps"] is None
    diffusers.DDPMScheduler(num_train_timesteps=4000).save_pretrained(tmp_path / "pipe" / "scheduler")
    out = export_onnx(tmp_path / "pipe" / "unet", tmp_path / "m.onnx", max_batch=2, validate=False,
                      log=lambda s: None)
    info = read_info(out.path)
    assert info.unet.num_train_timesteps == info.diffusion.num_train_timesteps == 4000


def test_a_positional_unet_takes_its_timestep_count_from_its_diffusion_json(tmp_path: Path) -> None:
    """The schedule comes from a diffusion.json beside config.json first (the way to choose one by
    hand); the model's T came from the scheduler config or 1000 alone: 'the schedule's 4000 (from
    diffusion.json) differs from the model's 1000' for a config.json that states no T."""
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.runtime.info import read_info

    torch.manual_seed(0)
    diffusers.UNet2DModel(**SMALL_UNET).save_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "diffusion.json").write_text(json.dumps({"num_train_timesteps": 4000}))
    for scheduler in (None, 1000):  # a bare UNet folder; one whose scheduler config diffusion.json overrides
        if scheduler is not None:
            diffusers.DDPMScheduler(num_train_timesteps=scheduler).save_pretrained(tmp_path / "unet")
        out = export_onnx(tmp_path / "unet", tmp_path / "m.onnx", max_batch=2, validate=False, force=True,
                          log=lambda s: None)
        info = read_info(out.path)
        assert info.unet.num_train_timesteps == info.diffusion.num_train_timesteps == 4000


def test_a_timestep_count_mismatch_says_which_schedule_and_what_to_write(tmp_path: Path) -> None:
    from ddpm_export.errors import BadInputError
    from ddpm_export.export.onnx import export_onnx

    torch.manual_seed(0)
    diffusers.UNet2DModel(**SMALL_UNET, time_embedding_type="learned", num_train_timesteps=500).save_pretrained(
        tmp_path / "u")
    with pytest.raises(BadInputError, match=r"num_train_timesteps=1000 \(the default DiffusionConfig: .*u has no "
                                            r'diffusion.json; write one holding \{"num_train_timesteps": 500\}'):
        export_onnx(tmp_path / "u", tmp_path / "m.onnx", validate=False, log=lambda s: None)
    diffusers.DDPMScheduler(num_train_timesteps=500).save_pretrained(tmp_path / "u")  # its own scheduler config
    export_onnx(tmp_path / "u", tmp_path / "m.onnx", max_batch=2, validate=False, log=lambda s: None)
