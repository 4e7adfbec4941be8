"""Local stand-ins used by the tests and the benchmark: a moto S3 server process and a latency/fault proxy.

Not part of a run: nothing in the pipeline imports this package (moto comes with the `test` extra)."""
