"""`python -m fruitpipe ...`, and the entry file for spark-submit (`spark-submit .../fruitpipe/__main__.py run ...`)."""
import sys

from fruitpipe.cli import main

if __name__ == "__main__":
    sys.exit(main())
