"""The `etlora` command: export, add-adapter, remove-adapter, run, inspect, report.

One module per group of commands (bundle_commands, run_command, report_command), each adding its
own parser. Errors print as one line (`etlora: error: ...`) with exit code 2; --verbose adds the
traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from rich.markup import escape

from etlora.cli import bundle_commands, report_command, run_command
from etlora.cli.output import console
from etlora.format.errors import EtloraError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etlora",
        description="Ship one language model with many LoRA adapters on ExecuTorch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  etlora export --model smollm2/ --adapter support=adapters/support --out bundle/",
    )
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    bundle_commands.add_parsers(commands)
    run_command.add_parser(commands)
    report_command.add_parser(commands)
    return parser


def run_shown(*argv: str) -> None:
    """Echo and run one etlora command the way a user would type it (demo scripts); exit on failure."""
    print(f"\n$ etlora {' '.join(argv)}", flush=True)
    code = main(list(argv))
    if code != 0:
        sys.exit(f"etlora {argv[0]} failed with exit code {code}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.verbose or getattr(args, "run_verbose", False)):
        # torch, torchao, transformers and ExecuTorch warn about their own deprecations on every
        # export; etlora's lines are its own output and its logging, so --verbose brings these back.
        warnings.filterwarnings("ignore")
    try:
        return args.run(args)
    except EtloraError as error:
        if args.verbose:
            console.print_exception()
        console.print(f"[red]etlora: error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("etlora: interrupted")
        return 130
