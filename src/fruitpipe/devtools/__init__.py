"""Local stand-ins used by the tests and the benchmarks: a moto S3 server process, a latency/fault proxy,
a Spark standalone cluster, a `fruitpipe serve` process.

Not part of a run: nothing in the pipeline imports this package (moto comes with the `test` extra)."""
