"""Shared input/output column params with pyspark.ml-style setters, for fruitpipe's stages."""
from __future__ import annotations

from typing import Any

from pyspark.ml.param.shared import HasInputCol, HasOutputCol


class HasColumns(HasInputCol, HasOutputCol):
    def setInputCol(self, value: str) -> Any:
        return self._set(inputCol=value)

    def setOutputCol(self, value: str) -> Any:
        return self._set(outputCol=value)
