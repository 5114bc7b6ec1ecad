"""``python -m central.cli``: the `sdserve` console script without installing it."""

from central.cli import main

raise SystemExit(main())
