"""The Python client of the facegen gateway: sync and asyncio, with automatic resume.

::

    from services.client import FacegenClient, job_request

    with FacegenClient("127.0.0.1:50051") as client:
        job = client.run(job_request("studio portrait", reference="face.jpg"))
        for event in job:
            print(f"{event.percent:5.1f}% {event.message}")
        print(job.result.images[0].url)

``run`` submits with an idempotency key and follows the job with Watch;
when a stream breaks (UNAVAILABLE: a gateway stopped, restarted or drained,
a connection reset) it watches again from the last event it handed out,
with jittered backoff, until the outage budget or the caller's deadline is
spent. Every event reaches the caller once, in order. See docs/clients.md
for what resume covers and what it does not.
"""

from services.client.aio import AsyncFacegenClient, AsyncJobStream
from services.client.builders import job_request, photo_bytes
from services.client.channel import tls_credentials
from services.client.errors import GatewayError, JobLostError
from services.client.retry import RetryPolicy
from services.client.sync import FacegenClient, JobStream

__all__ = [
    "AsyncFacegenClient",
    "AsyncJobStream",
    "FacegenClient",
    "GatewayError",
    "JobLostError",
    "JobStream",
    "RetryPolicy",
    "job_request",
    "photo_bytes",
    "tls_credentials",
]
