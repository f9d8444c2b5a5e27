"""``python -m clinlm <command> ...``: one entry point for the user-facing commands.

Each command is a module ``clinlm.<module>`` with ``main(argv) -> int``, imported only when
its command runs (so ``ask`` on a gbdt run never imports torch, and a broken optional
module cannot break the others).
"""

from __future__ import annotations

import importlib
import inspect
import sys

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ask": ("clinlm.ask", "answer ONE appointment / subject given as fields"),
    "serve": ("clinlm.serve", "HTTP API + web page for trained runs"),
    "predict": ("clinlm.predict", "predict a CSV with a trained run"),
    "release": ("clinlm.release", "release a trained run (Hugging Face Hub)"),
    "export": ("clinlm.export", "export a trained run"),
}


def usage() -> str:
    """The list of commands."""
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m clinlm <command> [options]   (<command> --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``clinlm.<command>.main(rest)``; returns its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    entry = importlib.import_module(COMMANDS[name][0]).main
    if inspect.signature(entry).parameters:
        code = entry(rest)
    else:  # a main() that parses sys.argv itself (clinlm.predict)
        sys.argv = [f"python -m clinlm {name}", *rest]
        code = entry()
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
