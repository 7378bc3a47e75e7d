"""The entry point of `restream` and `python -m restream`: the fast path first (list, show and the root help
without Typer: fastpath.py), else the Typer app (the cli package)."""

import sys


def main() -> None:
    from restream.fastpath import serve

    try:
        code = serve(sys.argv[1:])
    except KeyboardInterrupt:  # as the Typer app ends on Ctrl-C: an empty line, exit 130
        sys.stderr.write("\n")
        sys.exit(130)
    if code is not None:
        sys.exit(code)
    from restream.cli import main as typer_main

    typer_main()


if __name__ == "__main__":
    main()
