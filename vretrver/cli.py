"""The ``vretrver`` command: eval, demo, rerank, view, and the data builders of the training stages."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vretrver.cli_eval import add_eval_parser, add_rerank_options, cmd_eval, reader_flags

__all__ = ["add_rerank_options", "build_parser", "cmd_eval", "json_object_option", "main", "reader_flags"]


def json_object_option(text: str | None, flag: str, example: str = '{"key": 1}') -> dict:
    """The mapping an option holds, as a JSON object or ``k=v,k=v`` ({} when not given); a clear exit
    naming the option otherwise."""
    from vretrver.options import mapping

    return mapping(text, flag, example)


def cmd_summarize(ns: argparse.Namespace) -> int:
    from vretrver.report.tables import collect_summaries
    from vretrver.samples import atomic_write_text

    text = collect_summaries(ns.root)
    atomic_write_text(Path(ns.root) / "summary.md", text)
    print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vretrver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    add_eval_parser(sub)

    p = sub.add_parser("summarize", help="one table over ROOT/<checkpoint>/<benchmark>/summary.json")
    p.add_argument("root")
    p.set_defaults(func=cmd_summarize)

    # Subcommands owned by other modules register themselves here (imported lazily on use).
    for module in ("vretrver.cli_demo", "vretrver.cli_data", "vretrver.cli_rl"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return ns.func(ns) or 0
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        # Bad input (a malformed line, a missing file, a wrong setting) is one line, not a traceback;
        # errors raised inside other libraries keep theirs. VRETRVER_DEBUG=1 shows every traceback.
        if os.environ.get("VRETRVER_DEBUG") or not _user_error(e):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _user_error(e: BaseException) -> bool:
    """Our input errors, or a ValueError / file error raised by our own code (not deep in a library)."""
    from vretrver.benchmarks.common import MissingDataError
    from vretrver.samples import SampleError

    if isinstance(e, SampleError | MissingDataError):
        return True
    if not isinstance(
        e, ValueError | FileNotFoundError | NotADirectoryError | IsADirectoryError | PermissionError
    ):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    origin = Path(tb.tb_frame.f_code.co_filename).resolve() if tb is not None else None
    return origin is not None and Path(__file__).resolve().parent in origin.parents


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.strerror}: {e.filename}"  # not "[Errno 2] ..."
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
