"""What the command line shows: the verbosity set by ``ddpm-export -v / -q`` and whether to draw
progress bars (torch-free). The library never draws one unless asked (``progress=True``)."""

from __future__ import annotations

import re
import sys
from typing import Mapping

import click

from ddpm_export.errors import BadInputError

__all__ = ["FLAG_NAMES", "VERBOSITY", "FloatRange", "IntRange", "count", "is_plain_int", "name_flags",
           "require_output_when_quiet", "show_progress", "use_flag_names"]

#: ``click.Context.meta`` key: 0 quiet (``-q``), 1 normal, 2 verbose (``-v``).
VERBOSITY = "ddpm_export.verbosity"
#: ``click.Context.meta`` key: the running command's ``{library argument: CLI flag}``, so that an
#: error raised by the library names the flag the user typed (``--guidance``, not ``guidance_scale``).
FLAG_NAMES = "ddpm_export.flag_names"
#: an integer as a flag's value: ASCII digits after an optional minus (a negative one is then refused
#: by its range, naming it). Python's int() also reads '1_0' as 10, and ' 8', '+8' and '٨' as 8.
_PLAIN_INT = re.compile(r"-?[0-9]+")
#: a real number as a flag's value: ASCII decimal or exponent notation, or inf / nan (refused by the
#: check of the value, which names it). Python's float() also reads '1_5' as 15.0 and ' 1.5', '١.٥'.
_PLAIN_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?(?:inf|infinity|nan)",
                          re.IGNORECASE)


def is_plain_int(text: str) -> bool:
    """Whether ``text`` is an integer written plainly: ASCII digits, an optional leading minus."""
    return _PLAIN_INT.fullmatch(text) is not None


class IntRange(click.IntRange):
    """:class:`click.IntRange` that takes plain integers only (:func:`is_plain_int`)."""

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        if isinstance(value, str) and not is_plain_int(value):
            self.fail(f"{value!r} is not a valid integer (digits 0-9 only).", param, ctx)
        return super().convert(value, param, ctx)


class FloatRange(click.FloatRange):
    """:class:`click.FloatRange` (no bounds: any float) that takes plainly written numbers only
    (:data:`_PLAIN_FLOAT`)."""

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        if isinstance(value, str) and _PLAIN_FLOAT.fullmatch(value) is None:
            self.fail(f"{value!r} is not a valid number (digits 0-9, '.', an exponent).", param, ctx)
        return super().convert(value, param, ctx)


def show_progress(flag: bool | None = None) -> bool:
    """Whether a command draws progress bars: ``flag`` when given (``--progress/--no-progress``),
    else on with ``-v``, off with ``-q``, otherwise when stderr is a terminal."""
    if flag is not None:
        return flag
    ctx = click.get_current_context(silent=True)
    verbosity = ctx.meta.get(VERBOSITY, 1) if ctx is not None else 1
    return verbosity == 2 or (verbosity == 1 and sys.stderr.isatty())


def require_output_when_quiet(outputs: Mapping[str, str | None]) -> None:
    """Refuse ``-q`` (nothing on stdout) for a command whose report is printed unless one of
    ``outputs`` (flag -> path or None) is given: the work would run and show nothing."""
    ctx = click.get_current_context()
    if ctx.meta.get(VERBOSITY, 1) == 0 and all(path is None for path in outputs.values()):
        raise BadInputError(f"-q prints nothing, and {ctx.info_name} prints its report: pass "
                            f"{' or '.join(f'{flag} FILE' for flag in outputs)} to keep it, or drop -q")


def use_flag_names(flags: Mapping[str, str]) -> None:
    """Let the running command's error messages name ``flags`` (library argument -> CLI flag)."""
    click.get_current_context().meta[FLAG_NAMES] = dict(flags)


def name_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each library argument of ``flags`` written as its CLI flag where it names
    the argument: ``guidance_scale=3.0`` -> ``--guidance 3.0``, ``classes: id 12`` -> ``--class: id
    12``, ``steps must`` -> ``--steps must``, ``rewrites 'x' are`` -> ``--rewrites 'x' are`` (a
    one-letter argument only as ``n=5``). Other words are left alone."""
    def alternatives(names: list[str]) -> str:
        return "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True)) or "(?!)"

    words, letters = alternatives([n for n in flags if len(n) > 1]), alternatives([n for n in flags if len(n) == 1])
    pattern = re.compile(rf"(?<![\w-])(?:(?P<word>{words})(?:=|(?=:| must\b| applies\b| '))|(?P<letter>{letters})=)")

    def flag(match: re.Match[str]) -> str:
        return flags[match.group("word") or match.group("letter")] + (" " if match.group(0).endswith("=") else "")
    return pattern.sub(flag, message)


def count(n: int, noun: str) -> str:
    """``"1 image"``, ``"2 images"``: ``n`` and ``noun``, plural with an s unless ``n`` is 1."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
