"""Start a Python subprocess alongside the tests: the helper lives in fruitpipe.devtools (the benchmark uses it too)."""
from fruitpipe.devtools.processes import background_python

__all__ = ["background_python"]
