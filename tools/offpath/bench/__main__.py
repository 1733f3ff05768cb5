"""``make bench`` / ``make bench-quick``: the performance contract, cell by
cell, each with its goal and met / missed (see :mod:`offpath.bench.run`)."""

from offpath.bench.run import main

main()
