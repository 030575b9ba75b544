"""`python -m pathnas.cli` (as torchrun runs it): the same as `pathnas-edge`."""
from . import main

main()
