"""Influence methods and the statistics behind them: pure math on arrays, no file I/O.

Each method module registers its :class:`fine_cli.registry.Method` objects when imported;
:func:`fine_cli.registry.methods` imports every module of this package, so a new method is
one new file here (plus its test). Every method maps a
:class:`~fine_cli.estimators.samples.SignalView` (and a slice of queries) to a
``(queries, subsets)`` array of scores, larger = more influential.
"""
