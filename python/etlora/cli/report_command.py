"""`etlora report`: memory and disk of a bundle's sessions against one merged model per adapter."""

from __future__ import annotations

import argparse
import json

from rich.markup import escape

from etlora.cli.output import console, stdout


def _parse_load_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, received {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_report(args) -> int:
    from etlora.report import build_report, write_report

    adapters = [name for name in (args.adapters or "").split(",") if name]
    report = build_report(args.bundle, args.out, adapters, naive=args.naive,
                          log=lambda text: console.print(f"  {text}"), load_options=dict(args.load_option or []))
    paths = write_report(report, args.out)
    stdout.print(f"wrote {', '.join(str(path) for path in paths.values())}")
    for target in report.targets:
        verdict = "not measured" if target.passed is None else "PASS" if target.passed else "FAIL"
        stdout.print(f"  {verdict}: {target.name}: {target.measured} (limit {target.limit})", highlight=False)
    if report.naive_note:
        console.print(f"note: {escape(report.naive_note)}", highlight=False, soft_wrap=True)
    return 0


def add_parser(commands) -> None:
    report = commands.add_parser(
        "report",
        help="memory and disk: the bundle's sessions vs one merged full model per adapter (child processes)",
        epilog="example: etlora report bundle/ --adapters support,legal --out report/",
    )
    report.add_argument("bundle", help="bundle directory")
    report.add_argument("--adapters", help="comma list of adapters to measure (default: all in the bundle)")
    report.add_argument("--out", default="report", help="folder for report.json/.md/.png (default report/)")
    report.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                        help="also merge, export and measure one full model per adapter (default on; cached "
                        "under OUT/naive_cache/)")
    report.add_argument("--load-option", action="append", type=_parse_load_option, metavar="KEY=VALUE",
                        help="passed to every etlora.load of the bundle, e.g. cache_dir=/tmp/packed "
                        "(VALUE read as JSON when it parses, else as text)")
    report.set_defaults(run=cmd_report)
