"""``python -m torchbp ...``: the same as the ``torchbp`` console script."""
from .cli import main

raise SystemExit(main())
