#!/bin/bash
# fruitpipe on Spark on Kubernetes (cluster deploy mode), with the archive from `fruitpipe package`.
# K8S_API, IMAGE (built from ./Dockerfile), ARCHIVE_URL and MAIN_URL are yours to set:
#  - ARCHIVE_URL: where executors and the driver download fruitpipe_env.tar.gz from, e.g. an https
#    pre-signed S3 URL (no Hadoop S3 connector needed), or s3a://... if the image has hadoop-aws.
#  - MAIN_URL: a copy of src/fruitpipe/__main__.py, reachable the same way.
# Credentials: the service account `fruitpipe` carries an IAM role (IRSA) with the policy from
# `fruitpipe iam-policy`; no key goes into this command or the Spark conf.
set -euo pipefail
: "${K8S_API:?}" "${IMAGE:?}" "${ARCHIVE_URL:?}" "${MAIN_URL:?}" "${INPUT:?}" "${OUTPUT:?}"
spark-submit \
  --master "k8s://${K8S_API}" \
  --deploy-mode cluster \
  --name fruitpipe \
  --archives "${ARCHIVE_URL}#fruitpipe_env" \
  --conf spark.kubernetes.container.image="${IMAGE}" \
  --conf spark.kubernetes.namespace=fruitpipe \
  --conf spark.kubernetes.authenticate.driver.serviceAccountName=fruitpipe \
  --conf spark.kubernetes.authenticate.executor.serviceAccountName=fruitpipe \
  --conf spark.pyspark.python=./fruitpipe_env/bin/python \
  --conf spark.pyspark.driver.python=./fruitpipe_env/bin/python \
  --conf spark.kubernetes.driverEnv.FRUITPIPE_CACHE=./fruitpipe_env/share/fruitpipe \
  --conf spark.executor.instances=4 \
  --conf spark.executor.cores=4 \
  --conf spark.executor.memory=6g \
  "${MAIN_URL}" run --input "${INPUT}" --output "${OUTPUT}" --overwrite
