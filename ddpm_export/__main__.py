"""``python -m ddpm_export``: the ``ddpm-export`` command line."""

from ddpm_export.cli import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="ddpm-export")
