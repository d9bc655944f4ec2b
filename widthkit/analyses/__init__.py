"""Registered analyses: one module each, discovered by :func:`list_analyses` (see :mod:`.base`)."""
from .base import (Analysis, Block, Figure, Link, Subject, Table, analyze, get_analysis, list_analyses, opt,
                   register_analysis)

__all__ = ["Analysis", "Block", "Figure", "Link", "Subject", "Table", "analyze", "get_analysis", "list_analyses",
           "opt", "register_analysis"]
