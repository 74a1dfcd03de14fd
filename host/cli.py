"""The ``polyspell`` command line.

Exit codes: 0 success; 1 the script (or plan) failed; 2 usage or configuration error;
3 security violation; 4 resource limit (time, memory, stack).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SECURITY, EXIT_RESOURCE = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="polyspell",
        description="Run Lua and JavaScript agent scripts that call Python tools, "
        "with one error language across all three.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    catalog = commands.add_parser(
        "catalog", help="list every error category and kind scripts can raise and catch",
        description="List every error category and kind, with its fields, default severity "
        "and whether it is retryable.",
    )
    catalog.add_argument("category", nargs="?", help="show only this category")
    catalog.add_argument("--json", action="store_true", help="print the catalog as JSON")
    catalog.set_defaults(handler=_catalog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polyspell`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


# -- catalog --------------------------------------------------------------------------


def _catalog(args: argparse.Namespace) -> int:
    from bridge.catalog import describe_catalog

    catalog = describe_catalog()
    if args.category:
        catalog = [c for c in catalog if c["category"] == args.category]
        if not catalog:
            names = ", ".join(c["category"] for c in describe_catalog())
            print(f"polyspell catalog: unknown category {args.category!r} (one of {names})",
                  file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        print(json.dumps(catalog, indent=2))
    else:
        sys.stdout.write(format_catalog(catalog))
    return EXIT_OK


def format_catalog(catalog: list[dict[str, Any]]) -> str:
    """The catalog as a readable table: one block per category, one row per kind."""
    lines = []
    for category in catalog:
        lines.append(f"{category['category']}  ({category['script_name']} in scripts)  "
                     f"{category['description']}")
        width = max(len(v["kind"]) for v in category["variants"])
        for variant in category["variants"]:
            retry = "-"
            if variant["retryable"]:
                retry = f"retry {variant['retry_after']}s" if variant["retry_after"] else "retry"
            fields = ", ".join(
                f"{f['name']}: {f['type']}" + ("" if f["required"] else f" = {f['default']!r}")
                for f in variant["fields"]
            )
            lines.append(f"  {variant['kind']:<{width}}  {variant['severity']:<8}  "
                         f"{retry:<11}  {fields}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
