"""`pathnas-edge`: find a compact model for pathology images and ship it to the lab's hardware.

Commands are registered here, statically, from the modules of this package; each imports its
heavy dependencies (torch, the runtimes) inside the command, so `--help` starts at once.
Nothing imports this package: it is the top layer.
"""
from __future__ import annotations

import sys

import typer

from . import core, deploy, profile, report, search, ship, tiles
from .common import err_console, interrupt_hint, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Find a compact model for pathology images and ship it to the lab's hardware.",
                  pretty_exceptions_enable=False, rich_markup_mode=None)
tiles.register(core.data_app)
app.add_typer(core.data_app, name="data")
app.add_typer(deploy.keys_app, name="keys")
app.add_typer(profile.profile_app, name="profile")
for module in (core, search, ship, deploy, profile, report):
    for command in module.COMMANDS:
        app.command()(command)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        print(f"pathnas-edge {metadata.version('pathnas-edge')}")
        raise typer.Exit()


@app.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="also show other libraries' log lines and debug detail"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    setup_logging(verbose)


INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def _click_class(name: str) -> type:
    """click's exception class ``name``, from the click typer really uses (newer typer vendors its own copy)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def main() -> None:
    from pathnas.errors import UserError

    setup_logging(verbose="--verbose" in sys.argv or "-v" in sys.argv)
    try:
        # Not standalone: so that user errors become one clear line instead of a traceback.
        code = app(standalone_mode=False, prog_name="pathnas-edge")
    except UserError as err:
        # markup=False: an error may quote a file's or a server's text, which must print as it is
        err_console.print(f"error: {err}", highlight=False, markup=False, soft_wrap=True)
        raise SystemExit(err.exit_code) from None
    except _click_class("UsageError") as err:  # unknown option or command, a bad option value
        err.show()
        raise SystemExit(2) from None
    except (typer.Abort, KeyboardInterrupt):
        code = INTERRUPTED
    except _click_class("ClickException") as err:
        err.show()
        raise SystemExit(err.exit_code) from None
    if code == INTERRUPTED:  # Ctrl-C (newer typer turns it into this exit code itself)
        err_console.print(f"interrupted: {interrupt_hint()}", highlight=False, markup=False, soft_wrap=True)
    raise SystemExit(code if isinstance(code, int) else 0)
