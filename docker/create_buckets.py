#!/usr/bin/env python3
"""Create the stack's S3 buckets if they are missing (the compose one-shot service `buckets` runs this).

Buckets come from the arguments, else from the environment: MLFLOW_BUCKET (MLflow artifacts),
DVC_BUCKET (the DVC remote), KPIGUARD_LANDING (the KPI landing zone, ``s3://bucket/prefix``) and
KPIGUARD_REPORT_BUCKET (daily reports). A name may be given as ``bucket`` or ``s3://bucket/prefix``.
The endpoint and credentials are boto3's usual environment variables (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION). Running it again changes nothing.
"""
from __future__ import annotations

import os
import sys
from urllib.parse import urlparse

BUCKET_ENV = ("MLFLOW_BUCKET", "DVC_BUCKET", "KPIGUARD_LANDING", "KPIGUARD_REPORT_BUCKET")


def bucket_name(value: str) -> str:
    """``s3://bucket/prefix`` or ``bucket`` -> ``bucket``."""
    value = value.strip()
    if "://" in value:
        parsed = urlparse(value)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3:// URI or a bucket name: {value!r}")
        return parsed.netloc
    return value.strip("/")


def wanted(argv: list[str], env: dict[str, str]) -> list[str]:
    values = argv or [env[k] for k in BUCKET_ENV if env.get(k)]
    names: list[str] = []
    for value in values:
        name = bucket_name(value)
        if name and name not in names:
            names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    names = wanted(sys.argv[1:] if argv is None else argv, dict(os.environ))
    if not names:
        print("create_buckets: no bucket named (arguments or " + ", ".join(BUCKET_ENV) + ")", file=sys.stderr)
        return 2
    client = boto3.client("s3", config=Config(s3={"addressing_style": "path"},
                                              retries={"max_attempts": 10, "mode": "standard"}))
    for name in names:
        try:
            client.create_bucket(Bucket=name)
            print(f"created bucket {name}")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
            print(f"bucket {name} exists")
    return 0


if __name__ == "__main__":
    sys.exit(main())
