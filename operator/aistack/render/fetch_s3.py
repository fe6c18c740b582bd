"""Download an S3 prefix into a directory: the init container of a model pod that serves a
LoRA adapter from ``s3://`` (vLLM loads adapters only from a local directory or the Hub).

The renderer passes this file's text to ``python3 -c`` in the vLLM image, which has boto3
(runai-model-streamer's s3 extra). boto3 reads the credentials and the endpoint from the
environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_ENDPOINT_URL`` from
the model's ``credentialsSecretRef``. Usage: ``python3 -c <this> s3://bucket/prefix DIR``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


def targets(keys: Iterable[str], prefix: str, dest: str) -> list[tuple[str, str]]:
    """``(key, local path)`` for every object under ``prefix``: the key's part after the
    prefix, below ``dest``. A key that would land outside ``dest`` (``..``) is refused."""
    root = os.path.realpath(dest)
    out = []
    for key in keys:
        rel = key[len(prefix) :].lstrip("/")
        if not key.startswith(prefix) or not rel or key.endswith("/"):
            continue
        path = os.path.realpath(os.path.join(root, rel))
        if os.path.commonpath([root, path]) != root:
            raise ValueError(f"object {key!r} would be written outside {dest}")
        out.append((key, path))
    return out


def main(argv: list[str]) -> int:
    import boto3  # type: ignore[import-not-found]

    source, dest = argv
    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = boto3.client("s3")
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]
    files = targets(keys, prefix, dest)
    if not files:
        print(f"no objects under {source}", file=sys.stderr)
        return 1
    for key, path in files:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        client.download_file(bucket, key, path)
    print(f"downloaded {len(files)} objects from {source} to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
