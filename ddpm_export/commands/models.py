"""`ddpm-export models`: the presets and their sizes."""

from __future__ import annotations

import click


@click.command("models")
def command() -> None:
    """List the presets in models/ with their parameter counts (needs torch)."""
    from ddpm_export import load_model
    from ddpm_export.contract.conditioning import CONDITIONINGS
    from ddpm_export.presets import preset_names

    rows = []
    for name in preset_names():
        model = load_model(name)
        cfg = model.config
        n = sum(p.numel() for p in model.parameters())
        cond = CONDITIONINGS[cfg.cond_kind].summary(cfg)
        rows.append((name, f"{n:,}", f"{cfg.in_channels}x{cfg.sample_size}x{cfg.sample_size}", cond))
    widths = [max(len(r[i]) for r in rows + [("preset", "parameters", "input", "conditioning")]) for i in range(4)]
    header = ("preset", "parameters", "input", "conditioning")
    for row in [header, *rows]:
        click.echo("  ".join(c.ljust(w) if i != 1 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
