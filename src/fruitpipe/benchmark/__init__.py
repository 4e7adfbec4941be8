"""`fruitpipe bench`: fruitpipe and the alternatives measured side by side on the same data, in one run.

harness (plan, resume, one child process per measurement, peak RSS) -> measures (what each child runs;
extra: the standalone-cluster and `fruitpipe serve` measurements) -> results.json + report (the markdown
table). dataset builds the image sets, memory samples RSS.
"""

MEASUREMENTS = ("limit", "fruitpipe", "bf16", "seed_torch_eager", "seed_onnxruntime", "spark_pandas_udf",
                "spark_predict_batch_udf", "ray_data", "scaling", "s3", "fruits360", "levers", "cluster",
                "serve")  # in run order; `--only` picks
OPT_IN = ("fruits360", "levers", "cluster", "serve")  # only when named: 90k images, the A/B runs, cluster, server
DEFAULT_MEASUREMENTS = tuple(name for name in MEASUREMENTS if name not in OPT_IN)
