"""Helpers for the tests, the benchmarks and the demo, kept out of the agent's
package: a loopback ZooKeeper (``testing``) and a server playing Heat's
instance-facing side (``heatstub``).

Not installed: setup.py packages ``mozagent`` only, so an image carries the
agent and no test server (``tests/test_packaging.py`` checks the wheel).
Importable from the checkout: pytest puts the repository root on ``sys.path``
(``tests/`` is a package), ``bench/benchlib.py`` does the same for the
benchmarks, and ``tools/demo`` runs ``python -m mozagent_dev.…`` from the root.
"""
