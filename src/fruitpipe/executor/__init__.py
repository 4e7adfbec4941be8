"""Code that runs inside Spark's Python workers: no SparkSession here, heavy imports inside functions."""
