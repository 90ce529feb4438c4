"""The `corral` command line."""
from .main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
