"""`fruitpipe bench`: fruitpipe and the alternatives measured side by side on the same data, in one run.

harness (plan, resume, one child process per measurement, peak RSS) -> measures (what each child runs)
-> results.json + report (the markdown table). dataset builds the image sets, memory samples RSS.
"""

MEASUREMENTS = ("limit", "fruitpipe", "seed_torch_eager", "seed_onnxruntime", "spark_pandas_udf",
                "spark_predict_batch_udf", "ray_data", "scaling", "s3", "levers")  # in run order; `--only` picks
DEFAULT_MEASUREMENTS = MEASUREMENTS[:-1]  # the levers' A/B runs are asked for explicitly (--only levers)
