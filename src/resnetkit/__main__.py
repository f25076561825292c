"""``python -m resnetkit`` (this is also what ``torchrun -m resnetkit`` runs)."""

import sys

from .cli import main

sys.exit(main())
