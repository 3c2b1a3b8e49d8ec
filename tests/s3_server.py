"""A real S3-compatible object store on 127.0.0.1 for tests (moto's server, in a thread).

    with s3_server() as (base_uri, env):      # base_uri == "s3://twotower-test"
        pq.write_table(t, f"{base_uri}/dir/a.parquet")
        ray.init(num_cpus=2)                   # AFTER entering: workers inherit os.environ

Needs ``moto[server]>=5.2.2``: moto <= 5.2.1 answers CompleteMultipartUpload with a
``<CompleteMultipartUploadResponse>`` root element and pyarrow 26 (AWS SDK C++) treats
that 200 as an embedded error and fails every write (``AWS Error INTERNAL_FAILURE``).
Plain ``s3://bucket/key`` URIs work because pyarrow >= 15, botocore and Ray Data honour
``AWS_ENDPOINT_URL``; the env vars are set while the context is open and restored after.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Dict, Iterator, Tuple

BUCKET = "twotower-test"


@contextlib.contextmanager
def s3_server(bucket: str = BUCKET) -> Iterator[Tuple[str, Dict[str, str]]]:
    """Start moto's S3 server on a free 127.0.0.1 port, create ``bucket``, export the
    AWS_* env vars; yield ``("s3://<bucket>", env)``; then restore env and stop the server."""
    import boto3
    import moto
    from moto.server import ThreadedMotoServer

    major, minor, patch = (int(x) for x in moto.__version__.split(".")[:3])
    if (major, minor, patch) < (5, 2, 2):
        raise RuntimeError(f"moto {moto.__version__} breaks pyarrow multipart writes; need >=5.2.2")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request access log lines

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: no race
    server.start()  # returns once the socket is bound and listening
    try:
        host, port = server.get_host_and_port()
        env = {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",  # pyarrow>=15, botocore, s3fs
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # never probe 169.254.169.254 for creds/region
        }
        saved = {k: os.environ.get(k) for k in (*env, "AWS_SESSION_TOKEN", "AWS_PROFILE")}
        os.environ.update(env)
        for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):  # a real profile/token would confuse auth
            os.environ.pop(k, None)
        try:
            boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
            yield f"s3://{bucket}", env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        server.stop()  # shuts down this server's thread only
        if server._server is not None:  # release the listening socket too
            server._server.server_close()
