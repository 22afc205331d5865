import sys

from .cli import main

# Guarded: a --workers child (multiprocessing's spawn) imports this module as
# __mp_main__ and must not run the CLI again.
if __name__ == "__main__":
    sys.exit(main())
