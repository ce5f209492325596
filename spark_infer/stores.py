"""Spark's connector to the stores a scoring job reads and writes: Hadoop's `s3a` for `s3://` URIs (the scorer hands
Spark `s3a://`, `Location.hadoop_uri`).

Spark 4.3 ships Hadoop 3.5.0's client without its S3 connector. When this job starts Spark itself (not under
spark-submit, where the cluster's own classpath and `--packages` rule), the connector comes from Maven Central
through Spark's own resolver (`spark.jars.packages`, cached by Ivy after the first job): hadoop-aws at Spark's
Hadoop version and the AWS SDK modules it calls at the version Hadoop pins, not the SDK's 686 MB bundle jar.

Credentials and the endpoint are the AWS variables every other stage reads: Spark copies `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and `AWS_ENDPOINT_URL` into s3a's options itself; here
`AWS_ENDPOINT_URL_S3` (which wins, as for the AWS SDKs) and the region are passed on too, and a custom endpoint (an
S3-compatible server) is addressed by path, as those servers expect. Any `fs.s3a.*` option of the user's own
(`spark-defaults.conf`, `--conf spark.hadoop.fs.s3a....`) still applies.
"""

from __future__ import annotations

import os

from tfbridge.storage import Location

HADOOP_VERSION = "3.5.0"  # Spark 4.3's (pyspark/jars/hadoop-client-api-3.5.0.jar)
AWS_SDK_VERSION = "2.35.4"  # what hadoop-project 3.5.0 pins
S3A_PACKAGES = (f"org.apache.hadoop:hadoop-aws:{HADOOP_VERSION}", f"software.amazon.awssdk:s3:{AWS_SDK_VERSION}",
                f"software.amazon.awssdk:s3-transfer-manager:{AWS_SDK_VERSION}")
# The SDK bundle hadoop-aws names (686 MB) and what Spark ships already (netty, http clients, logging).
S3A_EXCLUDES = ("software.amazon.awssdk:bundle", "io.netty:*", "org.wildfly.openssl:*", "org.slf4j:slf4j-api",
                "commons-logging:commons-logging", "org.apache.httpcomponents:httpclient",
                "org.apache.httpcomponents:httpcore", "commons-codec:commons-codec")


def spark_options(uris) -> dict[str, str]:
    """Spark settings for a job that reads or writes `uris` (paths or URIs): none for local paths."""
    schemes = {Location.of(uri).scheme for uri in uris if uri is not None}
    if "s3" not in schemes:
        return {}
    options = {}
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # this process starts Spark: it brings the connector
        options["spark.jars.packages"] = ",".join(S3A_PACKAGES)
        options["spark.jars.excludes"] = ",".join(S3A_EXCLUDES)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["spark.hadoop.fs.s3a.endpoint"] = endpoint
        options["spark.hadoop.fs.s3a.path.style.access"] = "true"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["spark.hadoop.fs.s3a.endpoint.region"] = region
    return options
