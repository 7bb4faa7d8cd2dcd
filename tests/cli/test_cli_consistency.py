"""One shape for every command: ``-o/--output`` for the main output (old spellings kept as
aliases), ``-v/-q``, ``--threads``, ``python -m ddpm_export``, ``py.typed``, no progress bar from
the library unless asked."""

from __future__ import annotations

import inspect
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ddpm_export.cli import main
from ddpm_export.console import FloatRange, IntRange

MAIN_OUTPUT = {"onnx": "output", "sample": "output", "bundle": "output", "trt": "engine", "verify": "report",
               "demo": "out_dir", "triton": "output", "inspect": "json_path", "bench": "json_path"}
ALIASES = {"trt": "--save-engine", "verify": "--report", "demo": "--out", "inspect": "--json", "bench": "--json"}


@pytest.mark.parametrize("name", sorted(MAIN_OUTPUT))
def test_main_output_is_dash_o(name):
    command = main.commands[name]
    [option] = [p for p in command.params if p.name == MAIN_OUTPUT[name]]
    assert "-o" in option.opts and "--output" in option.opts, option.opts
    if name in ALIASES:
        assert ALIASES[name] in option.opts


def test_every_command_with_an_output_is_listed():
    for name, command in main.commands.items():
        if any("-o" in p.opts for p in command.params if hasattr(p, "opts")):
            assert name in MAIN_OUTPUT, name


def _int_options():
    for name, command in [("", main), *main.commands.items()]:
        for param in command.params:
            if isinstance(param.type, click.types.IntParamType):
                yield f"{name} {param.opts[0]}".strip(), param


def test_every_integer_option_takes_plain_digits_only():
    """click's integer types call int(), which reads '1_0' as 10 and ' 8', '+8' and '\u0668' as 8."""
    options = dict(_int_options())
    assert {"--threads", "sample --steps", "sample --seed", "trt --max-batch", "bench --repeats"} <= set(options)
    for where, param in options.items():
        assert type(param.type) is IntRange, where
        for text in ("1_0", " 8", "+8", "\u0668", "8\n"):
            with pytest.raises(click.BadParameter, match="is not a valid integer \\(digits 0-9 only\\)"):
                param.type.convert(text, param, None)
        low = param.type.min or 0
        assert param.type.convert(str(low), param, None) == low


def test_every_real_number_option_takes_plainly_written_numbers_only():
    """click's float type calls float(), which reads '1_5' as 15.0 and ' 1.5', '\u0661.\u0665' as 1.5
    (`sample --guidance 1_5` sampled at guidance 15); inf and nan still reach the value's own check."""
    options = {f"{name} {param.opts[0]}": param for name, command in main.commands.items() for param in command.params
               if isinstance(param.type, click.types.FloatParamType)}
    assert {"sample --guidance", "sample --eta", "verify --guidance"} <= set(options)
    for where, param in options.items():
        assert type(param.type) is FloatRange, where
        for text in ("1_5", " 1.5", "\u0661.\u0665", "0x10", "1.5\n", "1,5"):
            with pytest.raises(click.BadParameter, match="is not a valid number"):
                param.type.convert(text, param, None)
        for text, value in (("0.5", 0.5), (".5", 0.5), ("5e-1", 0.5), ("+1.", 1.0), ("0", 0.0)):
            if param.type.max is None or value <= param.type.max:
                assert param.type.convert(text, param, None) == value, (where, text)


@pytest.mark.parametrize("args, message", [
    (["sample", "--steps", "1_0"], "Invalid value for '--steps': '1_0' is not a valid integer (digits 0-9 only)."),
    (["--threads", "+2", "models"], "Invalid value for '--threads': '+2' is not a valid integer (digits 0-9 only)."),
    (["sample", "--seed", "-1"], "Invalid value for '--seed': -1 is not in the range x>=0."),
])
def test_an_integer_flag_with_other_characters_is_refused(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_quiet_prints_nothing_but_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["-q", "sample", "-n", "2", "--steps", "2", "-o", "x.png"])
    assert result.exit_code == 0 and result.output == "" and (tmp_path / "x.png").is_file()
    result = CliRunner().invoke(main, ["-q", "sample", "-n", "2", "-o", "x.png"])
    assert result.exit_code == 2 and result.output.startswith("Error: x.png exists")


@pytest.mark.parametrize("args, flags", [(["bench", "--model", "tiny", "--no-peers"], "--json FILE"),
                                         (["inspect", "--model", "tiny"], "--json FILE or --plot FILE")])
def test_quiet_is_refused_where_the_report_would_go_nowhere(tmp_path, monkeypatch, args, flags):
    # bench and inspect print their report; with -q and no file the work ran and showed nothing
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["-q", *args])
    assert result.exit_code == 2, result.output
    assert result.output == f"Error: -q prints nothing, and {args[0]} prints its report: pass {flags} to keep it, " \
                            "or drop -q\n"
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(main, ["-q", "inspect", "--model", "tiny", "--erf-samples", "1", "--json", "r.json"])
    assert result.exit_code == 0 and result.output == "" and (tmp_path / "r.json").is_file()


def test_verbose_draws_progress(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["-v", "sample", "-n", "2", "--steps", "3", "-o", "x.png"])
    assert result.exit_code == 0 and "0/3" in result.output, result.output
    result = CliRunner().invoke(main, ["sample", "-n", "2", "--steps", "3", "-o", "y.png"])
    assert result.exit_code == 0 and "0/3" not in result.output  # not a terminal: no bar by default


def test_threads_reach_onnxruntime(tmp_path):
    from ddpm_export.presets import shipped_onnx
    from ddpm_export.runtime.onnxruntime_backend import create_session
    from ddpm_export.threads import get_threads, set_threads

    set_threads(1)
    try:
        session = create_session(shipped_onnx("digits"))
        assert session.get_session_options().intra_op_num_threads == 1
    finally:
        set_threads(None)
    assert get_threads() is None
    result = CliRunner().invoke(main, ["--threads", "0", "models"])
    assert result.exit_code == 2 and "--threads" in result.output
    # a million threads made ONNX Runtime allocate until the kernel killed it; 10**20 overflowed its binding
    for args in (["--threads", "1000000", "models"], ["--threads", str(10**20), "models"],
                 ["bench", "--model", "tiny", "--threads", "2000"],
                 ["inspect", "--model", "tiny", "--threads", "2000"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and "--threads" in result.output and "1<=x<=1024" in result.output, result.output


def test_inspect_refuses_a_batch_past_the_export_limit_before_any_work():
    # it printed the whole report, then failed in the profile naming `max_batch`
    result = CliRunner().invoke(main, ["inspect", "--model", "tiny", "--profile", "--batch", "5000"])
    assert result.exit_code == 2 and "--batch" in result.output and "1<=x<=4096" in result.output, result.output
    assert "Per-block" not in result.output and "max_batch" not in result.output


def test_library_draws_no_progress_by_default():
    from ddpm_export.runtime import Pipeline

    assert inspect.signature(Pipeline.sample).parameters["progress"].default is False


def test_py_typed_ships():
    import ddpm_export

    assert (Path(ddpm_export.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_help_teaches_by_example(name):
    """Each command's --help ends its description with runnable examples (click keeps the \\b block)."""
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0
    examples = result.output.split("Example", 1)
    assert len(examples) == 2, f"{name} --help has no example"
    assert f"ddpm-export {name}" in examples[1] or "ddpm-export --threads" in examples[1]


@pytest.mark.parametrize("args", [["sample", "-o", "e.png"], ["demo", "-o", "d"], ["inspect"],
                                  ["onnx", "-o", "e.onnx"]])
def test_an_empty_model_name_is_refused_not_taken_for_the_default(tmp_path, monkeypatch, args):
    # sample and demo fell back to the default model on --model ''
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [*args, "--model", ""])
    assert result.exit_code == 2 and "an empty model name: give a preset" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_quiet_and_verbose_together_are_a_usage_error():
    # the last of the two won: -q -v drew progress bars and printed the summary
    result = CliRunner().invoke(main, ["-q", "-v", "models"])
    assert result.exit_code == 2 and "-q (print nothing but errors) and -v (progress bars) contradict" in result.output
