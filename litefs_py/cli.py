"""Command line interface (`litefs`).

Every command turns user mistakes and bad inputs into one line on stderr and an exit code from
`errors.ExitCode`; tracebacks are only for bugs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from . import __version__
from .errors import ExitCode, QuietError
from .ltx import (
    DecoderV1,
    LTXError,
    Version,
    format_filename,
    format_txid,
    is_ltx_filename,
    open_decoder,
    page_checksum,
    parse_filename,
)
from .ltx.header import HEADER_SIZE, Header

if TYPE_CHECKING:
    from .storage.base import ReplicaClient
    from .store.store import Store

F = TypeVar("F", bound=Callable[..., Any])


def quiet_errors(fn: F) -> F:
    """Map QuietError and OS errors to one stderr line and their exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (QuietError, OSError) as exc:
            message, code = error_line(exc)
            if _json_logs:  # every line on stderr stays one JSON object
                import logging

                logging.getLogger("litefs").error("%s", message)
            else:
                click.echo(f"litefs: {message}", err=True)
            sys.exit(int(code))

    return wrapper  # type: ignore[return-value]


def error_line(exc: QuietError | OSError) -> tuple[str, ExitCode]:
    """The one line and the exit code of a user-facing error."""
    if isinstance(exc, QuietError):
        return exc.message, exc.code
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: no such file or directory", ExitCode.NOT_FOUND
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}", ExitCode.IO


def format_ms(ms: int) -> str:
    """LTX timestamps (ms since the epoch) as RFC 3339 UTC with milliseconds."""
    if ms <= 0:
        return "-"
    try:
        dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ms}ms"
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


_exit_without_teardown = False  # set by a command whose process has nothing left to do


class _Main(click.Group):
    """The `litefs` group. When a short command asks for it (restore) and the group runs as
    this process's own command line (`args` None, not a test's CliRunner), the process ends
    with os._exit once output is flushed: interpreter teardown (freeing every module) costs
    about 0.1 s, a sixth of a small restore, and the work is already on disk (fsynced,
    renamed) by then."""

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        try:
            return super().main(args, *rest, **kwargs)
        except SystemExit as exc:
            if args is None and _exit_without_teardown:
                _exit_now(exc.code)
            raise


def _exit_now(code: object) -> NoReturn:
    import logging
    import os

    if isinstance(code, str):  # sys.exit("message"): Python would print it
        click.echo(code, err=True)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


@click.group(cls=_Main,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="litefs")
def main() -> None:
    """litefs-py: a FUSE filesystem that makes SQLite databases safe without changing the app.

    Every committed transaction of a database under the mount is captured as an LTX file and
    shipped to a replica (S3-compatible storage or a directory) in Litestream 0.5's layout.

    \b
    Exit codes: 0 ok, 1 failed (e.g. a file is invalid), 2 usage error, 3 configuration
    error, 4 not found, 5 I/O or network error, 70 internal error (a bug; see the log).
    """


@main.command()
def version() -> None:
    """Print the litefs-py version and which LTX codec loops are in use."""
    from .ltx import compiled_codec
    from .sqlite.wal import compiled_wal_checksum

    click.echo(f"litefs {__version__}")
    click.echo("ltx codec: compiled (litefs_py/ltx/_frames.c)" if compiled_codec()
               else "ltx codec: pure Python (the C module was not built; a C compiler at "
                    "install time makes decoding about 1.6x faster)")
    click.echo("wal checksum: compiled (litefs_py/sqlite/_walsum.c)" if compiled_wal_checksum()
               else "wal checksum: pure Python (the C module was not built: recovery of large "
                    "WALs and restores of Litestream 0.3 backups are much slower)")


@main.group()
def ltx() -> None:
    """Inspect LTX files (the per-transaction page logs litefs writes and ships) and the
    segments of a local log (`DATA/dbs/NAME/ltx/seg-*.ltxs`: LTX records appended to one
    file)."""


def _version_option(fn: F) -> F:
    return click.option(
        "--format-version", "format_version", type=click.Choice(["auto", "1", "3"]),
        default="auto", show_default=True,
        help="LTX version: 3 is litefs-py/Litestream 0.5, 1 is LiteFS. auto detects it.",
    )(fn)


def _open(path: Path, format_version: str) -> Any:
    f = path.open("rb")
    version = None if format_version == "auto" else Version(int(format_version))
    try:
        return f, open_decoder(f, name=str(path), version=version)
    except BaseException:
        f.close()
        raise


def header_dict(h: Header, version: Version) -> dict[str, Any]:
    return {
        "version": int(version),
        "flags": h.flags,
        "page_size": h.page_size,
        "commit": h.commit,
        "min_txid": format_txid(h.min_txid),
        "max_txid": format_txid(h.max_txid),
        "timestamp": format_ms(h.timestamp),
        "timestamp_ms": h.timestamp,
        "pre_apply_checksum": f"{h.pre_apply_checksum:016x}",
        "wal_offset": h.wal_offset,
        "wal_size": h.wal_size,
        "wal_salt1": f"{h.wal_salt1:08x}",
        "wal_salt2": f"{h.wal_salt2:08x}",
        "node_id": h.node_id,
    }


def _segment_scan(path: Path) -> Any:
    """The scan of `path` if it is an LTX segment (records appended to one file, the local
    log's format), else None (a single LTX file)."""
    from .ltx.segment import is_segment, scan_segment

    with path.open("rb") as f:
        if not is_segment(f.read(4)):
            return None
        return scan_segment(f, name=str(path))


def _dump_doc(f: Any, dec: Any, name: str, version: Version, pages: bool) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    error: str | None = None
    try:
        for pgno, data in dec.pages():
            rows.append({"pgno": pgno, "checksum": f"{page_checksum(pgno, data):016x}"})
    except LTXError as exc:
        error = str(exc)
    index = {e.pgno: e for e in getattr(dec, "index", [])}
    for r in rows:
        e = index.get(r["pgno"])
        if e is not None:
            r["offset"], r["size"] = e.offset, e.size
    trailer = dec.trailer
    doc: dict[str, Any] = {
        "file": name,
        "header": header_dict(dec.header, version),
        "page_count": len(rows),
        "trailer": None if trailer is None else {
            "post_apply_checksum": f"{trailer.post_apply_checksum:016x}",
            "file_checksum": f"{trailer.file_checksum:016x}",
        },
        "valid": error is None,
        "error": error,
    }
    if pages:
        doc["pages"] = rows
    return doc


def _echo_dump(doc: dict[str, Any], pages: bool) -> None:
    h = doc["header"]
    click.echo(f"file:        {doc['file']}")
    click.echo(f"version:     {h['version']}")
    for key in ("flags", "page_size", "commit", "min_txid", "max_txid", "timestamp",
                "pre_apply_checksum", "wal_offset", "wal_size", "wal_salt1", "wal_salt2",
                "node_id"):
        value = h[key]
        if key == "flags":
            value = f"0x{value:08x}"
        click.echo(f"{key + ':':<20} {value}")
    if pages:
        click.echo("")
        click.echo(f"{'pgno':>10}  {'offset':>10}  {'size':>8}  checksum")
        for r in doc["pages"]:
            click.echo(f"{r['pgno']:>10}  {r.get('offset', '-'):>10}  {r.get('size', '-'):>8}"
                       f"  {r['checksum']}")
    click.echo(f"\npages:       {doc['page_count']}")
    trailer = doc["trailer"]
    if trailer is not None:
        click.echo(f"post-apply checksum: {trailer['post_apply_checksum']}")
        click.echo(f"file checksum:       {trailer['file_checksum']}")


@ltx.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--pages/--no-pages", default=True, show_default=True, help="List page frames.")
@click.option("--txid", "txid_text", metavar="TXID",
              help="In a segment, only the record holding this TXID (hex).")
@_version_option
@quiet_errors
def dump(file: Path, as_json: bool, pages: bool, txid_text: str | None,
         format_version: str) -> None:
    """Print the header, page frames and trailer of one LTX FILE, or of every record of a
    segment (`DATA/dbs/NAME/ltx/seg-*.ltxs`; --txid picks one).

    Exits 1 (after printing what could be read) if the file, or a record of the segment, is
    invalid, or the segment ends in a torn record.
    """
    from .ltx.segment import open_record

    txid = _parse_txid_option(txid_text)
    scan = _segment_scan(file)
    if scan is None:
        f, dec = _open(file, format_version)
        version = Version.V1 if isinstance(dec, DecoderV1) else Version.V3
        with f:
            doc = _dump_doc(f, dec, str(file), version, pages)
        if as_json:
            click.echo(json.dumps(doc, indent=2))
        else:
            _echo_dump(doc, pages)
        if doc["error"] is not None:
            if not as_json:
                click.echo(f"litefs: invalid LTX file: {doc['error']}", err=True)
            sys.exit(int(ExitCode.FAILED))
        return
    from .ltx import Decoder

    docs = []
    with file.open("rb") as seg:
        for rec in scan.records:
            h = rec.header
            if txid is not None and not h.min_txid <= txid <= h.max_txid:
                continue
            name = f"{file}@{rec.offset}"
            with open_record(seg, rec.offset, rec.length) as f:
                docs.append({"offset": rec.offset, "length": rec.length,
                             **_dump_doc(f, Decoder(f, name=name), name, Version.V3, pages)})
    if txid is not None and not docs:
        raise QuietError(f"{file}: no record holds TXID {format_txid(txid)}",
                         ExitCode.NOT_FOUND)
    torn = None if scan.problem is None else {"offset": scan.problem_offset,
                                              "problem": scan.problem}
    bad = [d for d in docs if d["error"] is not None]
    if as_json:
        click.echo(json.dumps({"segment": str(file), "created": format_ms(scan.created_ms),
                               "size": scan.size, "records": docs, "torn_tail": torn},
                              indent=2))
    else:
        click.echo(f"segment:     {file}")
        click.echo(f"created:     {format_ms(scan.created_ms)}")
        click.echo(f"records:     {len(scan.records)} in {scan.end} of {scan.size} bytes")
        for d in docs:
            click.echo(f"\n--- record at byte {d['offset']} ({d['length']} bytes)")
            _echo_dump(d, pages)
        if torn is not None:
            click.echo(f"\ntorn tail at byte {torn['offset']}: {torn['problem']}")
        for d in bad:
            click.echo(f"litefs: invalid LTX record: {d['error']}", err=True)
    if bad or (torn is not None and txid is None):
        sys.exit(int(ExitCode.FAILED))


def _parse_txid_option(text: str | None) -> int | None:
    from .ltx import parse_txid

    if text is None:
        return None
    try:
        return parse_txid(text)
    except ValueError as exc:
        raise QuietError(f"--txid: {exc}", ExitCode.USAGE) from None


@ltx.command()
@click.argument("files", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("-q", "--quiet", is_flag=True, help="Print only the bad files and records.")
@_version_option
def verify(files: tuple[Path, ...], quiet: bool, format_version: str) -> None:
    """Check every rule and checksum of each LTX FILE, or of every record of a segment.

    Prints one line per file (per record of a segment); exits 0 only if everything is valid
    (a segment that ends in a torn record is not), else 1.
    """
    bad = 0
    for path in files:
        try:
            scan = _segment_scan(path)
        except LTXError as exc:
            bad += 1
            click.echo(f"{path}: {exc.message}")
            continue
        except OSError as exc:
            bad += 1
            click.echo(f"{path}: {exc.strerror or exc}")
            continue
        if scan is not None:
            bad += _verify_segment(path, scan, quiet)
            continue
        problem: str | None = None
        try:
            f, dec = _open(path, format_version)
            with f:
                trailer = dec.verify()
                name_problem = _filename_problem(path, dec.header)
                if name_problem:
                    problem = name_problem
        except LTXError as exc:
            problem = _ltx_problem(exc, str(path))
        except OSError as exc:
            problem = exc.strerror or str(exc)
        if problem is not None:
            bad += 1
            click.echo(f"{path}: {problem}")
        elif not quiet:
            h = dec.header
            click.echo(f"{path}: ok (TXID {format_txid(h.min_txid)}-{format_txid(h.max_txid)}, "
                       f"{dec.page_count} pages, file checksum {trailer.file_checksum:016x})")
    sys.exit(int(ExitCode.FAILED) if bad else 0)


def _ltx_problem(exc: LTXError, name: str) -> str:
    return exc.message if exc.name == name and exc.offset is None else (
        f"{exc.message} (offset {exc.offset})" if exc.offset is not None else exc.message)


def _verify_segment(path: Path, scan: Any, quiet: bool) -> int:
    """Verify each record of a segment, one line each; returns how many problems."""
    from .ltx.segment import verify_record

    bad = 0
    with path.open("rb") as f:
        for rec in scan.records:
            h = rec.header
            where = f"{path}@{rec.offset}"
            try:
                trailer = verify_record(f, rec.offset, rec.length, name=where)
            except LTXError as exc:
                bad += 1
                click.echo(f"{where}: {_ltx_problem(exc, where)}")
                continue
            if not quiet:
                click.echo(f"{where}: ok (TXID {format_txid(h.min_txid)}-"
                           f"{format_txid(h.max_txid)}, file checksum "
                           f"{trailer.file_checksum:016x})")
    if scan.problem is not None:
        bad += 1
        click.echo(f"{path}@{scan.problem_offset}: torn tail: {scan.problem}")
    elif not quiet:
        click.echo(f"{path}: ok (segment of {len(scan.records)} records, {scan.size} bytes)")
    return bad


def _filename_problem(path: Path, h: Header) -> str | None:
    if not is_ltx_filename(path.name):
        return None  # renamed copies are fine; only a real LTX name must match its header
    lo, hi = parse_filename(path.name)
    if (lo, hi) != (h.min_txid, h.max_txid):
        return (f"file name says TXIDs {format_txid(lo)}-{format_txid(hi)} but the header says "
                f"{format_txid(h.min_txid)}-{format_txid(h.max_txid)}")
    return None


@ltx.command()
@click.argument("segments", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write `<min>-<max>.ltx` files into (created if missing).")
@click.option("--force", is_flag=True, help="Overwrite existing files that differ.")
@quiet_errors
def extract(segments: tuple[Path, ...], out_dir: Path, force: bool) -> None:
    """Write each record of each SEGMENT as a file of its own, `<min>-<max>.ltx`.

    The files are ordinary LTX v3 files: any LTX tool reads them, and a directory of them
    is laid out like one level of a Litestream replica. Every record is verified first; an
    invalid record, or a torn tail, is reported and not written (exit 1). Files that already
    exist with the same bytes are left alone; ones that differ are refused (exit 1) unless
    --force.
    """
    import os

    from .ltx.segment import iter_records, verify_record

    out_dir.mkdir(parents=True, exist_ok=True)
    written = same = bad = 0
    lo_all: int | None = None
    hi_all = 0
    for path in segments:
        scan = _segment_scan(path)
        if scan is None:
            raise QuietError(f"{path}: not an LTX segment (an LTX file is already a file of "
                             "its own: copy it)", ExitCode.USAGE)
        with path.open("rb") as f:
            for rec, data in iter_records(f, scan):
                h = rec.header
                where = f"{path}@{rec.offset}"
                try:
                    verify_record(f, rec.offset, rec.length, name=where)
                except LTXError as exc:
                    bad += 1
                    click.echo(f"{where}: not extracted: {_ltx_problem(exc, where)}", err=True)
                    continue
                target = out_dir / format_filename(h.min_txid, h.max_txid)
                if target.exists():
                    if target.read_bytes() == data:
                        same += 1
                        continue
                    if not force:
                        bad += 1
                        click.echo(f"{target}: exists with other content; not overwritten "
                                   "(--force to overwrite)", err=True)
                        continue
                tmp = target.with_name(target.name + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
                written += 1
                lo_all = h.min_txid if lo_all is None else min(lo_all, h.min_txid)
                hi_all = max(hi_all, h.max_txid)
        if scan.problem is not None:
            bad += 1
            click.echo(f"{path}@{scan.problem_offset}: torn tail not extracted: {scan.problem}",
                       err=True)
    span = "" if lo_all is None else f" (TXIDs {format_txid(lo_all)}-{format_txid(hi_all)})"
    click.echo(f"extracted {written} records{span} to {out_dir}"
               + (f"; {same} already there" if same else ""))
    if bad:
        sys.exit(int(ExitCode.FAILED))


def _scan_levels(root: Path) -> dict[str, list[Path]]:
    """LTX files directly in ROOT, or per level in a Litestream replica layout."""
    levels: dict[str, list[Path]] = {}
    direct = sorted(p for p in root.iterdir() if p.is_file() and is_ltx_filename(p.name))
    if direct:
        levels["."] = direct
    base = root / "ltx" if (root / "ltx").is_dir() else root
    for sub in sorted(base.iterdir()):
        if sub.is_dir() and (sub.name.isdigit() or len(sub.name) == 4):
            files = sorted(p for p in sub.iterdir() if p.is_file() and is_ltx_filename(p.name))
            if files:
                levels[str(sub.relative_to(root))] = files
    return levels


@ltx.command("list")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@quiet_errors
def list_(directory: Path, as_json: bool) -> None:
    """List the LTX records in DIRECTORY with TXID ranges, sizes and timestamps.

    DIRECTORY is a database's local log (`DATA/dbs/NAME/ltx`: its segments, and the one-file
    records of data directories from before segments) or a replica directory with level
    subdirectories. Reports, per level, whether the TXID chain is contiguous.
    """
    from .store.ltx_log import is_segment_name, read_log

    if not directory.is_dir():
        raise QuietError(f"{directory}: no such directory", ExitCode.NOT_FOUND)
    entries_by_level: dict[str, list[tuple[int, int, Path, int, int]]] = {}
    if any(is_segment_name(p.name) for p in directory.iterdir()):
        entries_by_level["."] = [(r.range.min_txid, r.range.max_txid, r.path, r.offset,
                                  r.length) for r in read_log(directory)]
    else:
        for level, files in _scan_levels(directory).items():
            entries_by_level[level] = sorted(
                (*parse_filename(p.name), p, 0, p.stat().st_size) for p in files)
    if not any(entries_by_level.values()):
        raise QuietError(f"{directory}: no LTX files (names like {format_filename(1, 1)}) or "
                         "segments (seg-*.ltxs)", ExitCode.NOT_FOUND)
    report: list[dict[str, Any]] = []
    for level, found in entries_by_level.items():
        entries: list[dict[str, Any]] = []
        gaps: list[str] = []
        prev_max: int | None = None
        for lo, hi, p, offset, size in found:
            entry: dict[str, Any] = {"file": p.name, "min_txid": format_txid(lo),
                                     "max_txid": format_txid(hi), "size": size}
            if is_segment_name(p.name):
                entry["offset"] = offset
            try:
                with p.open("rb") as f:
                    f.seek(offset)
                    h = Header.decode(f.read(HEADER_SIZE), name=str(p))
                entry.update(commit=h.commit, page_size=h.page_size,
                             timestamp=format_ms(h.timestamp))
            except LTXError as exc:
                entry["error"] = exc.message
            if prev_max is not None and lo != prev_max + 1:
                gaps.append(f"{format_txid(prev_max)} -> {format_txid(lo)}")
            prev_max = hi if prev_max is None else max(prev_max, hi)
            entries.append(entry)
        report.append({"level": level, "files": entries, "contiguous": not gaps, "gaps": gaps})
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for lv in report:
        if len(report) > 1 or lv["level"] != ".":
            click.echo(f"level {lv['level']}:")
        click.echo(f"{'min_txid':<17} {'max_txid':<17} {'size':>10} {'commit':>8} {'page':>6}  "
                   f"{'timestamp':<24}  file")
        for e in lv["files"]:
            where = e["file"] + (f"@{e['offset']}" if "offset" in e else "")
            click.echo(f"{e['min_txid']:<17} {e['max_txid']:<17} {e['size']:>10} "
                       f"{e.get('commit', '-'):>8} {e.get('page_size', '-'):>6}  "
                       f"{e.get('timestamp', e.get('error', '-')):<24}  {where}")
        state = "contiguous" if lv["contiguous"] else "NOT contiguous: gaps " + ", ".join(
            lv["gaps"])
        noun = "records" if any("offset" in e for e in lv["files"]) else "files"
        click.echo(f"{len(lv['files'])} {noun}, chain {state}\n")


_json_logs = False  # set by setup_logging(fmt="json"): errors are logged, not echoed


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr at `level`: as text, or (`fmt="json"`, config log.format) one JSON object
    per line, {"time": RFC 3339 UTC with ms, "level", "logger", "message"} plus "exception"
    with a traceback, for log collectors."""
    import logging  # here: commands that never log do not pay for the import

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            doc = {"time": format_ms(int(record.created * 1000)), "level": record.levelname,
                   "logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                doc["exception"] = self.formatException(record.exc_info)
            return json.dumps(doc, ensure_ascii=False)

    global _json_logs
    _json_logs = fmt == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if _json_logs else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    if level != "debug":
        # httpx logs every request at INFO: with a lease that is several lines a second.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in filter(None, os.environ.get("TMPDEBUG", "").split(",")):
        logging.getLogger(name).setLevel(logging.DEBUG)



@main.command()
@click.option("--mount-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where applications open databases (config: fuse.dir; default /litefs).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where litefs keeps databases and LTX files (config: data.dir; default "
                   "/var/lib/litefs).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file: litefs.yml, or a Litestream file as it is (default: "
                   "./litefs.yml, then /etc/litefs.yml).")
@click.option("--allow-other", is_flag=True, default=None,
              help="Let other users access the mount (config: fuse.allow-other).")
@click.option("--debug-fuse", is_flag=True, help="Log every FUSE request (very verbose).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warn", "error"]),
              default=None, help="Log level (config: log.level; default info).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@quiet_errors
def mount(mount_dir: Path | None, data_dir: Path | None, config_path: Path | None,
          allow_other: bool | None, debug_fuse: bool, log_level: str | None,
          command: tuple[str, ...]) -> None:
    """Mount the database directory and capture every committed transaction.

    Runs in the foreground until SIGINT or SIGTERM, then unmounts cleanly. Before the mount
    is exposed, databases missing locally are restored from their replica, and every
    database is recovered (hot journals rolled back, committed WAL transactions recorded,
    checksums verified). The primary serves its replicas on http.addr (port 20202).

    With `lease: {candidate: false, advertise-url: http://PRIMARY:20202}` in the config
    this mount is a read-only replica that follows that primary (or, without an
    advertise-url, the replica bucket): see docs/replicas.md.

    \b
    With a COMMAND (`litefs mount -- gunicorn app:app`) litefs starts it once the mount is
    ready, passes SIGINT/SIGTERM/SIGHUP on to it, and when it exits unmounts and exits with
    its exit status (128+N if signal N killed it: SIGTERM gives 143). Without one, the
    config's `exec:` commands run in order: each but the last to completion (a non-zero exit
    unmounts and exits with that status), the last supervised like COMMAND; an
    `if-candidate: true` command runs only on a lease candidate (e.g. migrations).
    """
    import logging

    from .app import AppCommand, MountOptions, run_mount
    from .config import load_config

    cfg = load_config(config_path)
    setup_logging(log_level or cfg.log.level, cfg.log.format)
    for note in cfg.notes:  # a Litestream file: what litefs does differently
        logging.getLogger("litefs").info("%s: %s", cfg.source, note)
    if command:
        commands: tuple[AppCommand, ...] = (AppCommand(tuple(command)),)
    else:
        commands = tuple(AppCommand(tuple(c.argv), bool(c.if_candidate)) for c in cfg.exec)
    opts = MountOptions(
        mount_dir=mount_dir or Path(cfg.fuse.dir),
        data_dir=data_dir or Path(cfg.data.dir),
        allow_other=cfg.fuse.allow_other if allow_other is None else allow_other,
        debug=debug_fuse or cfg.fuse.debug,
        config=cfg,
        commands=commands,
    )
    try:
        code = run_mount(opts)
    except (QuietError, OSError) as exc:
        if cfg.exit_on_error:
            raise
        _stay_up(exc)
    if code:
        sys.exit(code)


@main.command(context_settings={"allow_interspersed_args": False})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file (default: ./litefs.yml, then /etc/litefs.yml).")
@click.option("--mount-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The litefs mount (config: fuse.dir; default /litefs).")
@click.option("--on-primary", is_flag=True,
              help="On a replica, run COMMAND on the primary's node (through its replication "
                   "API; needs http.secret) and stream its output and exit status back.")
@click.option("--env", "env_vars", multiple=True, metavar="NAME=VALUE",
              help="Set this variable for COMMAND (on the primary with --on-primary; repeatable).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@quiet_errors
def run(config_path: Path | None, mount_dir: Path | None, on_primary: bool,
        env_vars: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Run COMMAND so that its SQLite writes reach the primary (workers, cron jobs, CLIs).

    \b
    On the primary COMMAND simply runs here. On a read replica, where its writes would
    fail, litefs refuses (exit 2) and names the primary, unless --on-primary is given:
    then COMMAND runs on the primary's node, with the primary's environment plus --env,
    no standard input, this working directory if it exists there (else /); its output
    and exit status come back here, and Ctrl-C stops it there.

    \b
        litefs run -- python3 manage.py cleanup
        litefs run --on-primary --env DAYS=30 -- python3 /app/cleanup.py
    """
    import os

    from .app import http_secret, resolve_mount_dir
    from .config import load_config
    from .proxy.run import node_role, run_on_primary

    env: dict[str, str] = {}
    for item in env_vars:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise QuietError(f"--env {item!r}: expected NAME=VALUE", ExitCode.USAGE)
        env[name] = value
    cfg = load_config(config_path)
    mount = resolve_mount_dir(mount_dir or Path(cfg.fuse.dir))
    role, primary = node_role(mount)
    if role == "primary":
        try:
            os.execvpe(command[0], list(command), {**os.environ, **env})
        except OSError as exc:
            click.echo(f"litefs: cannot run {command[0]}: {exc.strerror or exc}", err=True)
            sys.exit(126 if isinstance(exc, PermissionError) else 127)
    url = primary or cfg.lease.advertise_url
    if not on_primary:
        raise QuietError(f"this node is a read-only replica (of the primary at "
                         f"{url or 'an unknown address'}): {command[0]} could not write "
                         "there. Run it on the primary, or with --on-primary to run it on "
                         "the primary's node from here", ExitCode.USAGE)
    if url is None:
        raise QuietError("this node is a read-only replica and knows no primary to run the "
                         "command on (no .primary in the mount, no lease.advertise-url)",
                         ExitCode.NOT_FOUND)
    code = run_on_primary(url, http_secret(cfg), list(command), env)
    if code:
        sys.exit(code)


def _stay_up(exc: QuietError | OSError) -> NoReturn:
    """exit-on-error: false (LiteFS's meaning): after a start-up failure, log it and keep the
    process (and the container) up so the machine can be inspected, instead of exiting into
    a restart loop. SIGTERM or SIGINT then exits with the failure's code."""
    import logging
    import signal

    message, code = error_line(exc)
    log = logging.getLogger("litefs")
    log.error("%s", message)
    log.error("exit-on-error is false: staying up so this machine can be inspected; stop "
              "with SIGTERM or SIGINT")
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signum = signal.sigwait(stop)
    log.info("received %s; exiting", signal.Signals(signum).name)
    sys.exit(int(code))


@main.command()
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="litefs data directory (config: data.dir; default /var/lib/litefs).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file (default: ./litefs.yml, then /etc/litefs.yml).")
@quiet_errors
def recover(name: str, data_dir: Path | None, config_path: Path | None) -> None:
    """Accept database NAME as it is now when it no longer matches its LTX log.

    `litefs mount` refuses a database whose checksum differs from its last LTX file (the file
    was changed outside litefs, or the data directory was damaged) and names this command.
    It records the current database as one more transaction holding every page, so the log
    replays to exactly this database again. Run it while the data directory is not mounted.

    A LiteFS data directory is imported first (its LTX files become litefs records with the
    same TXIDs; LiteFS's originals are kept in DATA/dbs/NAME/quarantine/). Nothing recovery
    sets aside is deleted: it goes to that quarantine (docs/operations.md).
    """
    from .config import load_config
    from .store.recovery import recover as recover_db
    from .store.store import Store

    cfg = load_config(config_path)
    setup_logging("info", cfg.log.format)
    store = Store(data_dir or Path(cfg.data.dir), quarantine_limit=cfg.data.quarantine_limit)
    store.lock()
    try:
        db = store.load(name)
        if db is None:
            raise QuietError(f"no database {name!r} in {store.dbs_dir}", ExitCode.NOT_FOUND)
        before = db.ltx.last()
        recover_db(db, accept_current=True, quarantine=store.quarantine(name))
        after = db.txid
        db.close()
        if before is not None and after == before.header.max_txid:
            click.echo(f"{name}: matches its LTX log at TXID {after:016x}; nothing to do")
        else:
            click.echo(f"{name}: recorded the current database as TXID {after:016x}")
    finally:
        store.close()


@main.command()
@click.argument("replica_url", metavar="[REPLICA-URL]", required=False)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file (default: ./litefs.yml, then /etc/litefs.yml).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Data directory whose free space is checked (config: data.dir).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as one JSON document.")
def doctor(replica_url: str | None, config_path: Path | None, data_dir: Path | None,
           as_json: bool) -> None:
    """Check that this machine and the replica can run litefs; one line per check.

    Checks every replica in the configuration, or the REPLICA-URL given
    (s3://BUCKET/PATH?endpoint=HOST or file:///DIR): where the credentials were found,
    which endpoint and scheme are used and why, list, put/get/delete of a probe object
    (`.litefs-doctor-*`, a name Litestream and litefs ignore, removed again), conditional
    writes (If-None-Match), the clock against the server's; then /dev/fuse, fusermount3 and
    the free space in the data directory (docs/operations.md).

    \b
    Each line says ok, warn (works, but worth knowing), skip (not tried after an earlier
    failure) or FAIL, and the fix. Exit status: 0 if nothing FAILed, 1 otherwise.
    """
    from .config import Config, load_config
    from .doctor import run

    cfg: Config | None = None
    error: QuietError | None = None
    try:
        cfg = load_config(config_path)
    except QuietError as exc:
        error = exc
    directory = data_dir or Path(cfg.data.dir if cfg is not None else Config().data.dir)
    report = run(cfg, error, replica_url, directory)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for check in report.checks:
            click.echo(check.line())
        failed = sum(c.status == "FAIL" for c in report.checks)
        click.echo(f"{len(report.checks)} checks, {failed} failed" if failed else
                   f"{len(report.checks)} checks, all ok")
    sys.exit(0 if report.ok else int(ExitCode.FAILED))


# --------------------------------------------------------------------------------------------
# restore
# --------------------------------------------------------------------------------------------

# Litestream spells long flags with one dash (Go's flag package); boot scripts written for
# `litestream restore` keep working. `-flag=value` is accepted too, as Go accepts it.
_SINGLE_DASH_FLAGS = {
    "-if-replica-exists": "--if-replica-exists",
    "-if-db-not-exists": "--if-db-not-exists",
    "-timestamp": "--timestamp",
    "-txid": "--txid",
    "-config": "--config",
    "-dry-run": "--dry-run",
    "-generation": "--generation",
    "-index": "--index",
    "-integrity-check": "--integrity-check",
    "-force": "--force",
    "-json": "--json",
    "-data-dir": "--data-dir",
}


def rewrite_single_dash(args: list[str], mapping: dict[str, str],
                        takes_value: frozenset[str] = frozenset()) -> list[str]:
    """`-if-replica-exists` → `--if-replica-exists`, `-txid=c` → `--txid=c`. Stops at `--`;
    the token after an option in `takes_value` (spelled either way) is a value and is kept."""
    out: list[str] = []
    value_next = False
    for i, arg in enumerate(args):
        if value_next:
            out.append(arg)
            value_next = False
            continue
        if arg == "--":
            out.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        name = mapping.get(name, name)
        out.append(name + eq + value)
        value_next = not eq and name in takes_value
    return out


class LitestreamCompatCommand(click.Command):
    """A click command that also accepts Litestream's single-dash long flags."""

    single_dash: dict[str, str] = _SINGLE_DASH_FLAGS

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = frozenset(
            opt for p in self.params if isinstance(p, click.Option) and not p.is_flag
            for opt in p.opts)
        return super().parse_args(ctx, rewrite_single_dash(list(args), self.single_dash,
                                                           takes_value))


_RESTORE_EXIT_CODES = """\b
Exit codes:
  0   restored; or skipped by --if-db-not-exists (OUT exists) or --if-replica-exists
      (nothing at the replica path); or --dry-run showed a plan
  1   the backups cannot give the target: a gap in the TXID chain, no snapshot, a corrupt
      or truncated object, a checksum mismatch, mixed page sizes, a failed
      --integrity-check; or OUT exists (use --force or --if-db-not-exists)
  2   usage error (bad flag, TXID or timestamp; URL without -o)
  3   configuration error (config file, replica URL, credentials, a missing or wrong
      age identity for an encrypted replica)
  4   not found: no backups at the replica path, --txid after the latest TXID,
      --timestamp before the first backup, database name not in the configuration
  5   I/O or network error (endpoint unreachable, access denied, disk full)
"""


def _parse_when(value: str | None) -> datetime | None:
    if value is None:
        return None
    from .storage.base import parse_timestamp

    try:
        return parse_timestamp(value)
    except ValueError:
        raise QuietError(f"invalid --timestamp {value!r}: expected RFC 3339, e.g. "
                         "2026-01-02T15:04:05Z or 2026-01-02T15:04:05.123+01:00",
                         ExitCode.USAGE) from None


def _parse_hex(value: str | None, what: str) -> int | None:
    if value is None:
        return None
    from .ltx import parse_txid

    try:
        n = parse_txid(value)
    except ValueError:
        raise QuietError(f"invalid {what} {value!r}: expected hex digits, e.g. c, 0xc or "
                         "000000000000000c", ExitCode.USAGE) from None
    if what == "--txid" and n == 0:
        raise QuietError("invalid --txid 0: TXIDs start at 1", ExitCode.USAGE)
    return n


@main.command(cls=LitestreamCompatCommand, epilog=_RESTORE_EXIT_CODES)
@click.argument("source", metavar="(DB-NAME | REPLICA-URL)")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the database to this file (required with a REPLICA-URL).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file for DB-NAME (default: ./litefs.yml, then "
                   "/etc/litefs.yml).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Data directory for DB-NAME without -o (config: data.dir).")
@click.option("--if-replica-exists", is_flag=True,
              help="Exit 0 (and restore nothing) when the replica path holds no backups.")
@click.option("--if-db-not-exists", is_flag=True,
              help="Exit 0 (and change nothing) when the database already exists.")
@click.option("--timestamp", "timestamp",
              help="Restore the last transaction at or before this RFC 3339 time.")
@click.option("--txid", "txid", help="Restore up to this TXID (inclusive; hex: c, 0xc or 16 "
                                     "digits).")
@click.option("--generation", help="Litestream 0.3 backups: restore this generation.")
@click.option("--index", "wal_index", help="Litestream 0.3 backups: replay WAL up to this "
                                           "index (hex).")
@click.option("--dry-run", is_flag=True, help="Print the plan (files, sizes, times); write "
                                              "nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or the result as JSON.")
@click.option("--integrity-check", is_flag=True,
              help="Run PRAGMA integrity_check before installing the database.")
@click.option("--force", is_flag=True,
              help="Replace an existing database (and its -wal/-shm/-journal files).")
@click.option("--age-identity", "age_identities", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="An age identity file (AGE-SECRET-KEY-1... lines, as age-keygen writes) "
                   "to decrypt an encrypted replica; repeatable. Replaces "
                   "replica.age.identities.")
def restore(source: str, output: Path | None, config_path: Path | None, data_dir: Path | None,
            if_replica_exists: bool, if_db_not_exists: bool, timestamp: str | None,
            txid: str | None, generation: str | None, wal_index: str | None, dry_run: bool,
            as_json: bool, integrity_check: bool, force: bool,
            age_identities: tuple[Path, ...]) -> None:
    """Rebuild a database from its replica (Litestream 0.5 layout, or 0.3 generations).

    SOURCE is a database name from the configuration (e.g. store.db) or a replica URL
    naming one database's path: s3://BUCKET/PATH?endpoint=HOST[:PORT], file:///DIR or /DIR.

    \b
    Where it goes:
      -o OUT          a plain SQLite file at OUT (parent directories are created);
      DB-NAME alone   DATA/dbs/DB-NAME/ in the data directory, with its position, so
                      `litefs mount` serves it and continues the replica's TXIDs (run it
                      before the mount starts; it refuses while a mount holds DATA).

    Every object is verified (file checksums, and rolling checksums where recorded) while it
    is written to OUT.tmp; OUT itself changes only by one rename at the end. Litestream's
    single-dash flags (-o, -config, -txid, -timestamp, -if-replica-exists,
    -if-db-not-exists, -dry-run) work too.
    """
    global _exit_without_teardown
    _exit_without_teardown = True
    with _restore_errors(as_json):
        from .replication.progress import NullProgress, Progress
        from .replication.restore import RestoreRequest, check_point
        from .replication.restore import restore as run_restore

        when, upto = _parse_when(timestamp), _parse_hex(txid, "--txid")
        index = _parse_hex(wal_index, "--index")
        check_point(txid=upto, timestamp=when, generation=generation, wal_index=index)
        replica = _restore_source(source, output, config_path, data_dir, dry_run)
        client = _with_identities(replica.client, age_identities)
        request = RestoreRequest(
            client, output=output, data_dir=replica.data_dir,
            name=source if replica.data_dir is not None else "", txid=upto,
            timestamp=when, generation=generation, wal_index=index,
            if_replica_exists=if_replica_exists, if_db_not_exists=if_db_not_exists,
            force=force, integrity=integrity_check, dry_run=dry_run,
            progress=NullProgress() if dry_run else Progress(0, stream=sys.stderr))
        try:
            with _data_dir_lock(None if dry_run else request.data_dir,
                                replica.quarantine_limit) as store:
                outcome = run_restore(request, store=store)
        finally:
            close = getattr(client, "close", None)  # the reader's kept-alive connections
            if close is not None:
                close()
        _restore_report(as_json, outcome.to_json(), outcome.summary())


@contextlib.contextmanager
def _restore_errors(as_json: bool) -> Iterator[None]:
    """A failed restore: one stderr line and its exit code; with --json also an error
    document on stdout."""
    try:
        yield
    except (QuietError, OSError) as exc:
        if isinstance(exc, QuietError):
            message, code = exc.message, exc.code
        else:
            where = f"{exc.filename}: " if exc.filename else ""
            message, code = f"{where}{exc.strerror or exc}", ExitCode.IO
        if as_json:
            click.echo(json.dumps({"status": "error", "error": message,
                                   "exit_code": int(code)}, indent=2))
        click.echo(f"litefs: {message}", err=True)
        sys.exit(int(code))


@dataclass(frozen=True)
class _RestoreSource:
    client: ReplicaClient
    data_dir: Path | None  # DB-NAME without -o: restore into this data directory
    quarantine_limit: int | None = None  # data.quarantine-limit (with a data directory)


def _restore_source(source: str, output: Path | None, config_path: Path | None,
                    data_dir: Path | None, dry_run: bool) -> _RestoreSource:
    """SOURCE is a replica URL (needs -o OUT, except for a dry run) or a database name from
    the configuration (without -o: restored into the data directory)."""
    from .replica_clients import client_for, client_for_url

    if "/" in source or "://" in source:
        if output is None and not dry_run:
            raise QuietError(f"restoring from a replica URL needs -o OUT (the database file to "
                             f"write), e.g. litefs restore -o /data/app.db {source}",
                             ExitCode.USAGE)
        return _RestoreSource(client_for_url(source, reading=True), None)
    from .config import load_config

    cfg = load_config(config_path)
    replica = cfg.replica_for(source)
    if replica is None:
        where = f" in {cfg.source}" if cfg.source is not None else \
            " (no configuration file found: ./litefs.yml, /etc/litefs.yml)"
        names = ", ".join(db.name for db in cfg.dbs)
        known = f"; it lists {names}" if names else ""
        raise QuietError(
            f"database {source!r} has no replica{where}{known}: add a `replica:` (for "
            "every database) or a `dbs:` entry with one, or give a replica URL with -o OUT",
            ExitCode.NOT_FOUND)
    store_dir = (data_dir or Path(cfg.data.dir)) if output is None else None
    return _RestoreSource(client_for(replica, reading=True), store_dir,
                          cfg.data.quarantine_limit)


def _with_identities(client: ReplicaClient, files: tuple[Path, ...]) -> ReplicaClient:
    """`client` decrypting with the age identities in `files` (replacing any from the
    configuration; its recipients stay)."""
    if not files:
        return client
    from .storage.age import AgeKeys, AgeReplicaClient, AgeSettingsError

    recipients: tuple[str, ...] = ()
    if isinstance(client, AgeReplicaClient):
        recipients = client.keys.recipients
        client = client.inner
    keys = AgeKeys(recipients=recipients,
                   identities=tuple(str(f.expanduser().absolute()) for f in files))
    try:
        return AgeReplicaClient(client, keys)
    except AgeSettingsError as exc:
        raise QuietError(f"--age-identity: {exc.detail}", ExitCode.CONFIG) from None


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path | None,
                   quarantine_limit: int | None) -> Iterator[Store | None]:
    """Hold the data directory (as a mount does) while a restore writes into it; yields its
    Store (None without a data directory). A database the restore replaces goes to its
    quarantine, kept within `quarantine_limit` bytes."""
    if data_dir is None:
        yield None
        return
    from .store.store import Store

    store = Store(data_dir) if quarantine_limit is None else \
        Store(data_dir, quarantine_limit=quarantine_limit)
    try:
        store.lock()
    except QuietError as exc:
        raise QuietError(f"{exc.message}. A running mount serves its own databases; to get "
                         f"a copy, restore to a file with -o OUT", exc.code) from None
    try:
        yield store
    finally:
        store.close()


def _restore_report(as_json: bool, doc: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(doc, indent=2) if as_json else text)


@main.command()
@click.argument("node", required=False)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file (default: ./litefs.yml, then /etc/litefs.yml).")
@click.option("--url", help="The HTTP API of any node of the cluster (default: this host's "
                            "http.addr from the configuration).")
@quiet_errors
def handoff(node: str | None, config_path: Path | None, url: str | None) -> None:
    """Move the primary's lease to another candidate, NODE (its lease.hostname or node id),
    or to the most caught-up one.

    The primary holds new transactions (those under way finish), waits until the target has
    every transaction, and releases the lease to it; writes pause for well under a second and
    then go to the new primary (the old one answers EROFS, and `.primary` names the new one).
    Needs lease.type etcd or s3. Exits 0 once handed over; 1 when it could not be (the
    primary stays primary: no candidate connected, or it did not catch up in 5 s); 5 when
    no node answered.
    """
    import httpx

    from .config import load_config

    cfg = load_config(config_path)
    # With --url the node asked decides (this host may have no configuration, or another
    # one): the local configuration's lease matters only when it says where to ask.
    if cfg.lease.type == "static" and (url is None or config_path is not None):
        raise QuietError("litefs handoff needs lease.type etcd or s3 (with a static lease the "
                         "primary is chosen in the configuration)", ExitCode.USAGE)
    if url is None:
        host, _, port = cfg.http.addr.rpartition(":")
        host = host.strip("[]")
        url = f"http://{host if host and host not in ('0.0.0.0', '::') else '127.0.0.1'}:{port}"
    secret = cfg.http.secret or os.environ.get("LITEFS_SECRET")
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    try:
        resp = httpx.post(url.rstrip("/") + "/litefs/v1/handoff", json={"to": node},
                          headers=headers, timeout=30)
        if resp.status_code == 404:
            raise QuietError(f"{url} has no handoff (a node with lease.type static, or not a "
                             "litefs node): ask a node of an etcd or s3 leased cluster",
                             ExitCode.USAGE)
        doc = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise QuietError(f"cannot reach {url}: {exc}", ExitCode.IO) from None
    if resp.status_code != 200:
        raise QuietError(f"handoff refused: {doc.get('error', resp.text)}", ExitCode.FAILED)
    click.echo(f"handed the lease of epoch {doc.get('epoch')} to {doc.get('to')} in "
               f"{doc.get('seconds')}s")


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="litefs data directory (config: data.dir; default /var/lib/litefs).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file (default: ./litefs.yml, then /etc/litefs.yml).")
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@quiet_errors
def status(data_dir: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Show each database's position and how far its replica is behind.

    Reads the status the running `litefs mount` keeps in DATA/status.json (updated every
    second). Exits 4 if no mount has written one, 1 if it is stale (the mount is not running).
    """
    import time

    from .config import load_config
    from .store.paths import DataDirPaths

    cfg = load_config(config_path)
    path = DataDirPaths(data_dir or Path(cfg.data.dir)).status
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise QuietError(f"no status at {path}: is `litefs mount` running with this data "
                         "directory?", ExitCode.NOT_FOUND) from None
    age = time.time() - float(doc.get("updated", 0))
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(f"litefs mount pid {doc.get('pid')}, status updated {age:.1f}s ago")
        cluster = doc.get("cluster")
        if cluster:
            click.echo(_cluster_line(cluster))
        node = doc.get("replica_of")
        if node:
            line = (f"read replica of {node.get('primary') or 'the bucket'}: following "
                    f"{node['source']}, lag {node['lag_seconds']:.3f}s, "
                    f"{node['applied_files']} files applied, {node['snapshots']} snapshots")
            if node.get("last_error"):
                line += f", last error: {node['last_error']}"
            click.echo(line)
            for name, follower in node.get("followers", {}).items():
                if follower.get("last_error"):
                    click.echo(f"{name}: following the bucket: last error: "
                               f"{follower['last_error']}{_retry_note(follower)}")
        for name, db in doc.get("databases", {}).items():
            line = f"{name}: TXID {db['txid']}"
            rep = db.get("replica")
            if rep:
                line += (f", replica TXID {rep['txid']} ({rep['url']}), lag "
                         f"{rep['lag_seconds']:.2f}s, spool {rep['spool_bytes']} bytes in "
                         f"{rep['spool_files']} files")
                if rep.get("last_error"):
                    line += f", last error: {rep['last_error']}{_retry_note(rep)}"
            kept = db.get("quarantine")
            if kept:
                line += (f", quarantine {kept['entries']} entries, {kept['bytes']} bytes in "
                         f"{kept['path']}")
            click.echo(line)
            drill = (rep or {}).get("validation")
            if drill:
                click.echo(f"{name}: {_drill_line(drill)}")
    if age > 10:
        click.echo(f"litefs: status is {age:.0f}s old; the mount is not running", err=True)
        sys.exit(int(ExitCode.FAILED))


def _drill_line(drill: dict[str, Any]) -> str:
    """`restore drill every 3600s: verified TXID ... at ..., 0 failures` (status text)."""
    text = f"restore drill every {drill['validation_interval']:g}s: "
    if drill.get("last_verified_txid"):
        text += (f"verified TXID {drill['last_verified_txid']} at {drill['last_verified_at']} "
                 f"(against {' and '.join(drill['verified_against'])})")
    else:
        text += "nothing verified yet"
    text += f", {drill['failures']} failure(s) in {drill['runs']} run(s)"
    if drill.get("mismatches"):
        text += f", {drill['mismatches']} checksum mismatch(es)"
    if drill.get("last_failure"):
        text += f"; last failure at {drill['last_failure_at']}: {drill['last_failure']}"
    return text


def _cluster_line(c: dict[str, Any]) -> str:
    """Role, epoch, lease holder and why this node is not the primary (etcd/s3 leases)."""
    holder = c.get("holder")
    held = (f"held by {holder['hostname']} ({holder['advertise_url']}) in epoch "
            f"{holder['epoch']}" if holder else "free")
    if c.get("role") == "primary":
        line = f"{c.get('hostname')}: primary of epoch {c.get('epoch')}"
    else:
        line = (f"{c.get('hostname')}: {c.get('role')}, not primary: "
                f"{c.get('why_not_primary') or '?'}")
    line += f"; lease {held} ({c.get('lease')}); commit mode {c.get('commit_mode')}"
    if c.get("quarantined_transactions"):
        line += (f"; {c['quarantined_transactions']} transaction(s) quarantined since the "
                 "mount started")
    return line


def _retry_note(doc: dict[str, Any]) -> str:
    """` (retrying cannot fix this; next attempt in 41 s)` for a status entry whose error
    needs a fix; the error message itself names the fix."""
    if not doc.get("needs_fix"):
        return ""
    wait = doc.get("next_attempt_in")
    when = f"; next attempt in {wait:.0f} s" if isinstance(wait, int | float) else ""
    return f" (retrying cannot fix this{when})"


@main.group("config")
def config_group() -> None:
    """Configuration files: turn a Litestream configuration into litefs.yml."""


@config_group.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the litefs.yml here instead of to stdout (never over an existing "
                   "file unless --force).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--no-check", is_flag=True,
              help="Do not load the result with this environment's variables (they may be "
                   "set only where litefs runs).")
@quiet_errors
def convert(file: Path, output: Path | None, force: bool, no_check: bool) -> None:
    """Print the litefs.yml that does what the Litestream configuration FILE does, with
    comments on what changed. `litefs mount --config FILE` reads FILE the same way without
    converting it.

    Each `dbs[].path` stays the path the app opens: its directory becomes the mount
    (fuse.dir), its file name a `dbs[].name`. Keys with no litefs counterpart are dropped
    with a comment saying why; keys litefs-py cannot honour (Azure/SFTP/NATS replicas,
    encryption, validation, directory replication) are refused, naming what to do instead.
    Exits 3 if FILE is not a Litestream configuration or would not load.
    """
    from .config import config_from_tree
    from .config.litestream import convert_tree, is_litestream, to_yaml
    from .config.schema import read_yaml

    raw = read_yaml(file)
    if not (isinstance(raw, dict) and is_litestream(raw)):
        raise QuietError(f"{file} is not a Litestream configuration (no dbs[].path with a "
                         "replica, no addr/logging/levels/snapshot); a litefs.yml needs no "
                         "converting", ExitCode.CONFIG)
    converted = convert_tree(raw, file)
    if not no_check:
        config_from_tree(converted.tree, file, notes=converted.notes, keymap=converted.keymap)
    text = to_yaml(converted, file)
    if output is None:
        click.echo(text, nl=False)
        return
    if output.exists() and not force:
        raise QuietError(f"{output} exists; choose another path or pass --force to replace it",
                         ExitCode.USAGE)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(file.stat().st_mode & 0o666)  # it may hold the same keys: no more readable
    tmp.replace(output)
    click.echo(f"wrote {output} ({len(converted.notes)} notes on what changed)", err=True)
