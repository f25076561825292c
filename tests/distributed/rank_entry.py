"""What torchrun runs for the tests that need a model without batch statistics: the CLI, with
the test-only ``ddp_test_resnet20_gn`` model registered first."""

import sys

from ddp_helpers import GN_MODEL, gn_model_info

from resnetkit.cli import main
from resnetkit.models import registry

if __name__ == "__main__":
    registry._REGISTRY[GN_MODEL] = gn_model_info()
    sys.exit(main())
