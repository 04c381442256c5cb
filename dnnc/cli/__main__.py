"""`python -m dnnc.cli`: the dnnc command."""
import sys

from .main import main

sys.exit(main())
