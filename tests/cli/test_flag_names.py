"""Library errors name the library's arguments; the CLI shows the flags the user typed instead."""

from __future__ import annotations

import pytest

from ddpm_export.console import name_flags

FLAGS = {"rewrites": "--rewrites", "guidance_scale": "--guidance", "classes": "--class", "steps": "--steps",
         "ddpm_steps": "--ddpm-steps", "eta": "--eta", "sampler": "--sampler", "n": "-n"}


@pytest.mark.parametrize(("message", "want"), [
    ("guidance_scale=3.0 needs a class-conditional model -- pass guidance_scale=1.0",
     "--guidance 3.0 needs a class-conditional model -- pass --guidance 1.0"),
    ("classes: id 12 is outside [0, 10)", "--class: id 12 is outside [0, 10)"),
    ("eta applies to the DDIM sampler only; got eta=0.5 with sampler='ddpm'",
     "--eta applies to the DDIM sampler only; got --eta 0.5 with --sampler 'ddpm'"),
    ("steps must be an int in [1, 1000]", "--steps must be an int in [1, 1000]"),
    ("rewrites 'bogus' are not valid", "--rewrites 'bogus' are not valid"),
    ("ddpm_steps must be an int in [1, 1000]", "--ddpm-steps must be an int in [1, 1000]"),  # not --ddpm---steps
    ("n=5: the last chunk; choose n so that n % 4 is 0", "-n 5: the last chunk; choose n so that n % 4 is 0"),
    # words that merely contain or resemble an argument stay
    ("the steps of subclasses: n: x, num_steps=3, the eta", "the steps of subclasses: n: x, num_steps=3, the eta"),
])
def test_arguments_become_flags(message: str, want: str) -> None:
    assert name_flags(message, FLAGS) == want


def test_no_flags_leaves_the_message() -> None:
    assert name_flags("guidance_scale=3.0 needs x", {}) == "guidance_scale=3.0 needs x"
