"""CLI sub-commands, one module each.

Every module here defines ``register(subparsers) -> None``, which adds its sub-command(s) to the
``mobile-vla`` parser and sets ``func`` on each parser. ``mobile_vla.cli`` discovers the modules, so adding a
command is one new file. Keep module top-levels light (no torch import): ``--help`` must be fast.
"""
