"""What the `moe` commands share: error reporting, options read from the options dataclasses,
and the repository a command serves."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import click

from moe.errors import MoEError


def friendly_errors(fn):
    """User mistakes become one line on stderr and exit code 2; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoEError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def comma_list(value: str, kind=str) -> list:
    """'1,4,16' -> [1, 4, 16] (blank items skipped)."""
    try:
        return [kind(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 1,4,16") from None


def field_option(options, name: str, *flags: str, **kw):
    """A click option for the field `name` of the dataclass `options`, whose default is the
    field's: each default is written once, in the dataclass. The value reaches the command under
    the field's name; a list field is given comma-separated."""
    f = next(f for f in dataclasses.fields(options) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, list):
        kind, default = type(default[0]), ",".join(map(str, default))
        kw.setdefault("callback", lambda ctx, param, value: comma_list(value, kind))
    elif default is not None and "type" not in kw and "is_flag" not in kw:
        kw["type"] = type(default)
    flags = flags or ("--" + name.replace("_", "-"),)
    return click.option(*flags, name, default=default, show_default=default is not None, **kw)


def exported(repository: Path | None, checkpoint: Path | None) -> Path:
    """The repository to serve: the given one, or build/ (re-)exported from the checkpoint
    when it is missing or holds other weights."""
    from export.repository import DEFAULT_OUT, export_repository, is_current

    if repository is None:
        repository = DEFAULT_OUT
        if not is_current(repository, checkpoint):
            click.echo(f"exporting the checkpoint to {repository} (missing or from other weights)")
            export_repository(checkpoint, repository, log=click.echo)
    elif not repository.exists():
        raise MoEError(f"model repository not found: {repository} (run `moe export`)")
    return repository
