"""Passes over the loop-nest IR, each a pure function Program -> Program with its invariant in
its docstring. The driver's stage list (driver/stages.py) says when each runs."""
