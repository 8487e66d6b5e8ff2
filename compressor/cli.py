"""The ``amdcompress`` command line (gzip/zstd conventions).

* ``encode [IN] [-o OUT]``: IN defaults to ``-`` (stdin); OUT defaults to
  ``IN.amd``, or stdout when reading stdin or with ``-c``.
* ``decode [IN] [-o OUT]``: OUT defaults to IN without ``.amd``.
* Never overwrites an existing file without ``-f``, never the input itself;
  writes go to a temporary file that is renamed into place, so a failure
  leaves no partial output. Refuses to write compressed data to a terminal.
* ``decode`` and ``test`` refuse a file that declares more than ``--max-size``
  bytes of data (default 4G) before decoding anything.
* Exit codes: 0 success, 1 error (one line on stderr), 2 usage error, 130
  interrupted (Ctrl-C: one line, no traceback, no temporary or partial file).

Tests call :func:`main` with an argument list instead of spawning shells.
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import click

from . import __version__, api, backends
from .codecs.errors import AmdError

STDIO = "-"
DEFAULT_MAX_SIZE = "4G"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int | None:
    """``4G``, ``512MiB``, ``1.5g``, ``100000`` (bytes; K/M/G/T are powers of
    1024, a trailing ``B``/``iB`` is optional) -> bytes; ``none`` -> None (no limit)."""
    if text.strip().lower() in ("none", "unlimited", "inf"):
        return None
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 4G, 512M, 100000, none)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


class _SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class _Interrupted(BaseException):
    """Ctrl-C inside a command (click would turn a KeyboardInterrupt into Abort)."""


def _interruptible(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except KeyboardInterrupt:
            raise _Interrupted() from None

    return wrapper


_max_size_option = click.option(
    "--max-size", type=_SizeType(), default=DEFAULT_MAX_SIZE, show_default=True,
    help="Refuse files that declare more decoded data than this (e.g. 512M, 16G, none).")


def _read_input(path: str) -> bytes:
    if path == STDIO:
        return sys.stdin.buffer.read()
    p = Path(path)
    if p.is_dir():
        raise AmdError("is a directory")
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise AmdError("no such file") from None
    except OSError as e:
        raise AmdError(e.strerror or str(e)) from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _write_output(data: bytes, path: str, src: str, force: bool, binary_to_tty_ok: bool) -> None:
    """Write atomically (temporary file + rename); stdout for ``-``."""
    if path == STDIO:
        if not binary_to_tty_ok and sys.stdout.isatty():
            raise AmdError("refusing to write compressed data to a terminal (use -o FILE or redirect)")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    out = Path(path)
    if src != STDIO and (_same_file(Path(src), out) or Path(src).resolve() == out.resolve()):
        raise AmdError(f"output {path} is the input file")
    if out.exists() and not force:
        raise AmdError(f"{path} already exists (use -f to overwrite)")
    if out.is_dir():
        raise AmdError(f"{path} is a directory")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise AmdError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _progress_factory(quiet: bool):
    """tqdm bars on a terminal; nothing when quiet or stderr is not a TTY."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return lambda total, desc="coding": tqdm(total=total, desc=desc, unit="chunk", leave=False)


def _fail(name: str, err: Exception) -> None:
    if not isinstance(err, AmdError):  # a bug of ours: still one line, never a traceback
        err = AmdError(f"internal error ({type(err).__name__}: {err}); please report it")
    click.echo(f"amdcompress: {name}: {err}", err=True)
    raise SystemExit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="amdcompress")
def cli() -> None:
    """Lossless compression with learned generative models."""


@cli.command()
@click.argument("input", default=STDIO, metavar="[IN|-]")
@click.option("-o", "--output", help="Output file (default: IN.amd; stdout for stdin).")
@click.option("-c", "--stdout", "to_stdout", is_flag=True, help="Write to stdout.")
@click.option("-m", "--model", default=api.AUTO, show_default=True, help="Model name; see `amdcompress models`.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Network passes / chain steps of a diffusion model (recorded in the file; default: the model's).")
@_interruptible
def encode(input: str, output: str | None, to_stdout: bool, model: str, force: bool, quiet: bool,
           steps: int | None) -> None:
    """Compress IN into an .amd file."""
    if output is None:
        output = STDIO if (to_stdout or input == STDIO) else input + ".amd"
    try:
        raw = _read_input(input)
        blob = api.compress(raw, model=model, progress=_progress_factory(quiet), steps=steps)
        _write_output(blob, output, input, force, binary_to_tty_ok=False)
    except Exception as e:  # AmdError, or a bug reported in one line
        _fail(input if input != STDIO else "stdin", e)
    if not quiet and output != STDIO and sys.stderr.isatty():
        i = api.info(blob)
        click.echo(f"{input}: {len(raw)} -> {len(blob)} bytes, {i.bits_per_dim:.3f} bits/dim ({i.model})", err=True)


@cli.command()
@click.argument("input", default=STDIO, metavar="[IN|-]")
@click.option("-o", "--output", help="Output file (default: IN without .amd; stdout for stdin).")
@click.option("-c", "--stdout", "to_stdout", is_flag=True, help="Write to stdout.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_max_size_option
@_interruptible
def decode(input: str, output: str | None, to_stdout: bool, force: bool, quiet: bool, max_size: int | None) -> None:
    """Decompress an .amd file."""
    name = input if input != STDIO else "stdin"
    if output is None:
        if to_stdout or input == STDIO:
            output = STDIO
        elif input.endswith(".amd") and len(input) > 4:
            output = input[:-4]
        else:
            _fail(name, AmdError("unknown suffix (expected .amd); use -o OUT or -c"))
    try:
        raw = api.decompress(_read_input(input), progress=_progress_factory(quiet), max_size=max_size)
        _write_output(raw, output, input, force, binary_to_tty_ok=True)
    except Exception as e:  # AmdError, or a bug reported in one line
        _fail(name, e)


@cli.command()
@click.argument("input", default=STDIO, metavar="[IN|-]")
@_max_size_option
@_interruptible
def test(input: str, max_size: int | None) -> None:
    """Decode IN fully and check it, writing nothing."""
    name = input if input != STDIO else "stdin"
    try:
        api.decompress(_read_input(input), max_size=max_size)
    except Exception as e:  # AmdError, or a bug reported in one line
        _fail(name, e)
    click.echo(f"{name}: OK")


@cli.command()
@click.argument("input", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_interruptible
def info(input: str, as_json: bool) -> None:
    """Show what an .amd file holds: kind, shape, model, sizes, bits/dim."""
    try:
        i = api.info(_read_input(input))
    except Exception as e:  # AmdError, or a bug reported in one line
        _fail(input, e)
    if as_json:
        click.echo(json.dumps(i.as_dict(), indent=2))
        return
    shape = "x".join(str(d) for d in i.shape)
    click.echo(f"file:        {input}\nmodel:       {i.model} (codec id {i.codec_id})\n"
               f"kind:        {i.kind} {shape} ({i.dims} dims)\n"
               f"size:        {i.file_bytes} bytes ({i.header_bytes} header + {i.payload_bytes} payload)\n"
               f"bits/dim:    {i.bits_per_dim:.4f}\ncrc32:       {i.crc32}\n"
               f"format:      {i.format_version} ("
               + ("checksum covers the header and the data)" if i.header_checked else
                  "older format: the checksum covers the data only, not the header)"))
    for key, value in i.details.items():
        click.echo(f"{key.replace('_', ' ') + ':':<12} {value}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json: bool) -> None:
    """List the available models (learned and classical) and their weights versions."""
    from amdcompress.models import registry

    rows = [
        {"name": b.name, "codec_id": b.codec_id, "learned": b.learned,
         "weights": b.weights_tag().hex(), "description": b.description,
         # every weights version this build decodes, newest (the one new files use) first
         "versions": [{"name": w.name, "tag": w.sha256[:4], "installed": registry.available(w.name),
                       "stream": w.stream} for w in b.entry.weights] if b.learned else [],
         # the payload layouts the model codes (a weights version's "stream" says which its files use)
         "streams": list(b.entry.streams) if b.learned else [],
         "options": list(b.options), "in_auto": b.learned and b.entry.auto}
        for b in backends.all_backends()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    w = max(len(r["name"]) for r in rows)
    click.echo(f"{'auto':<{w}}  picks, per input, the smallest file among the models below")
    for r in rows:
        kind = "learned  " if r["learned"] else "classical"
        click.echo(f"{r['name']:<{w}}  {kind} {r['weights']}  {r['description']}")
        for v in r["versions"]:
            layout = f", stream {v['stream']}" if len(r["streams"]) > 1 else ""
            click.echo(f"{'':<{w}}    weights {v['name']} ({v['tag']}{layout})"
                       f"{'' if v['installed'] else ': not installed'}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 error, 2 usage)."""
    try:
        cli.main(args=argv, prog_name="amdcompress", standalone_mode=False)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except _Interrupted:
        click.echo("amdcompress: interrupted", err=True)
        return 130
    except click.exceptions.Abort as e:
        if isinstance(e.__cause__, KeyboardInterrupt):
            click.echo("amdcompress: interrupted", err=True)
            return 130
        click.echo("amdcompress: aborted", err=True)
        return 1
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("amdcompress: interrupted", err=True)
        return 130
    except BrokenPipeError:  # e.g. `amdcompress decode x.amd -c | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1
    return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
