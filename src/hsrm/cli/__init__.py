"""The ``hsrm`` command. Thin: every subcommand calls the public function the README shows.

Each module in this package that defines ``register(sub, groups)`` adds its subcommands; ``groups``
holds the shared command groups (``sae``, ``prefs``, ``detect``) so that several modules can add
leaves to one group.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from hsrm.errors import HsrmError

GROUPS = {
    "sae": "sparse autoencoders on the model's activations",
    "prefs": "preference reward models and preference-pair building",
    "detect": "hallucination detection",
}


def build_parser() -> argparse.ArgumentParser:
    from hsrm import __version__

    parser = argparse.ArgumentParser(
        prog="hsrm",
        description="Hidden-state reward models: score an LLM's answers from its own internal signals.",
    )
    parser.add_argument("--version", action="version", version=f"hsrm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for name, help_ in GROUPS.items():
        gp = sub.add_parser(name, help=help_, description=help_)
        groups[name] = gp.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        gp.set_defaults(_group_parser=gp)
    import hsrm.cli as pkg

    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)):
        module = importlib.import_module(f"hsrm.cli.{mod}")
        if hasattr(module, "register"):
            module.register(sub, groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, show_time=False, markup=False)],
    )
    for noisy in ("httpx", "urllib3", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import hsrm.config

    hsrm.config.COMMAND = ["hsrm", *(sys.argv[1:] if argv is None else argv)]
    func = getattr(args, "func", None)
    if func is None:
        gp = getattr(args, "_group_parser", None)
        (gp or parser).print_help()
        return 2
    try:
        return int(func(args) or 0)
    except HsrmError as e:
        from rich.console import Console
        from rich.text import Text

        # Text, not markup: messages quote user input such as "[0, 1]" verbatim.
        Console(stderr=True, soft_wrap=True).print(Text.assemble(("error: ", "bold red"), str(e)))
        return 2
    except OSError as e:
        # A file cannot be read or written (permissions, a folder where a file is expected, a
        # full disk, a file-size limit), in this thread or re-raised from the shard writer's:
        # say which, as a message, not a traceback. Every writer is atomic, so what is left is
        # whole: a store resumes, a head folder is the old one or none.
        from rich.console import Console
        from rich.text import Text

        what = f"{e.filename}: " if e.filename is not None else ""
        msg = f"{what}{e.strerror or e}" + _resume_hint(args, "fix that and rerun")
        Console(stderr=True, soft_wrap=True).print(Text.assemble(("error: ", "bold red"), msg))
        return 2
    except KeyboardInterrupt:
        hint = _resume_hint(args, "rerun")
        if hint:
            from rich.console import Console

            Console(stderr=True, soft_wrap=True).print("interrupted" + hint, markup=False)
        return 130
    finally:
        hsrm.config.COMMAND = None


# Commands that write a resumable store: rerunning the same command carries on where it stopped.
_RESUMABLE = {"sample", "demo"}


def _resume_hint(args: argparse.Namespace, lead: str) -> str:
    import shlex

    import hsrm.config

    if args.command not in _RESUMABLE or not hsrm.config.COMMAND:
        return ""
    return (
        f"; the store keeps every shard written so far: {lead} "
        f"`{shlex.join(hsrm.config.COMMAND)}` to resume"
    )


if __name__ == "__main__":
    sys.exit(main())
