"""The `lightsv` command line.

Each subcommand is an `_add_<name>` function (its arguments) and a `_run_<name>` function (its
work, returning an exit code), registered in COMMANDS. Deliberate errors end as one line on
stderr and exit code 2, never as a traceback.
"""

import argparse
import importlib
import json
import sys

import yaml

from lightsv.errors import ConfigError, LightsvError

PROG = "lightsv"
USER_ERRORS = (LightsvError, FileNotFoundError, yaml.YAMLError)


def _progress(items: list, desc: str):
    # tqdm is optional; it stays silent when stderr is not a terminal (pipes, tests).
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, file=sys.stderr, leave=False, disable=None)


def _models():
    # Imported on use, so `lightsv --help` does not pay for importing torch.
    return importlib.import_module("lightsv.models")


def _add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL", help="model names (default: all registered)")
    parser.add_argument("--subsets", nargs="*", type=int, default=[2, 4], metavar="K",
                        help="subset counts K for the transformation module (default: 2 4; none: plain only)")
    parser.add_argument("--share", action="store_true", help="one narrow block shared by all subsets")
    parser.add_argument("--fusion", default="sum", help="cross-subset fusion (default: sum)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of audio per input (default: 3)")
    parser.add_argument("--batch", type=int, default=1, help="utterances per forward pass (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for latency (default: 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes (default: 10)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")


def _run_profile(args: argparse.Namespace) -> int:
    from lightsv.profile import profile_table, profile_variants

    if args.seconds <= 0:
        raise ConfigError(f"--seconds must be positive, got {args.seconds}")
    known = _models().MODELS
    names = args.models or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown model {', '.join(map(repr, unknown))}; known models: {', '.join(sorted(known))}")
    variants = [{"subsets": k, "share": args.share, "fusion": args.fusion} for k in args.subsets]
    rows = []
    for name in names:
        rows += profile_variants(name, variants, progress=lambda items: _progress(items, desc=name),
                                 seconds=args.seconds, batch=args.batch, threads=args.threads, repeats=args.repeats)
    print(json.dumps(rows, indent=2) if args.json else profile_table(rows))
    return 0


# name -> (help, add arguments, run); a new subcommand is two functions and one entry here.
COMMANDS = {
    "profile": ("parameters, MACs per second, peak memory and latency of models, plain and "
                "with the transformation module", _add_profile, _run_profile),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Lightweight on-device speaker verification.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def _fail(message: str) -> int:
    # One line, whatever the message (YAML errors span several).
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse has already printed usage or help; hand back its code instead of exiting.
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.run(args)
    except USER_ERRORS as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        return _fail("interrupted")
