"""The command line's old name: ``python -m vit_from_scratch.train`` runs :mod:`vit_from_scratch.cli`."""

import sys

from .cli import build_parser, config_from_args, main

__all__ = ["build_parser", "config_from_args", "main"]

if __name__ == "__main__":
    sys.exit(main())
