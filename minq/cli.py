"""The ``minq`` command.

    minq report [--schemes rtn-w4g64,rtn-w3g64] [--out minq-report]   the main job
    minq schemes                                                       list the registered schemes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minq import registry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="minq", description="minq: LLM quantization, from scratch.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report", help="quantize with every registered scheme; write a table and a plot")
    r.add_argument("--schemes", default=None, help="comma-separated scheme names (default: all registered)")
    r.add_argument("--out", default="minq-report", help="output folder (default: minq-report)")
    r.add_argument("--seed", type=int, default=0)
    sub.add_parser("schemes", help="list the registered schemes")
    args = p.parse_args(argv)

    if args.cmd == "schemes":
        for name in registry.SCHEMES:
            print(f"{name:16s} {registry.get(name).description}")
        return 0
    from minq.report import run_report

    schemes = None if args.schemes is None else [s.strip() for s in args.schemes.split(",") if s.strip()]
    try:
        run_report(schemes, out_dir=args.out, seed=args.seed)
    except (ValueError, TypeError) as e:
        print(f"minq: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'report.md'} and {out / 'report.png'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
