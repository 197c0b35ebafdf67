"""Scale out on Ray: one rate limit for the whole cluster, and nothing lost when a worker dies.

    import ray, llmbatch.ray as lr
    ray.init()
    limiter = lr.ClusterLimiter.create(requests_per_minute=1200)
    spec = lr.ClientSpec(base_url="http://vllm:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")
    ds = ray.data.read_parquet("docs/").map_batches(
        lr.LLMMapper,
        fn_constructor_kwargs={"client": spec, "template": "Summarize: {text}", "limiter": limiter},
        concurrency=4, batch_size=64, num_cpus=0.5,
    )

Needs `pip install llmbatch[ray]`; importing this package is the only thing that imports Ray.
Modules: `limiter` (the cluster limiter actor and the leased limiter), `window` (its
opening's slow start), `breaker` (the cluster's one outage breaker), `data` (the Ray Data
mapper), `run` (the CLI's workers and scheduler).

The limiter: one actor owns a `RateLimiter` (requests and tokens per minute, adaptive mode
included). Workers do not ask it once per request: each leases a slice of capacity (the
request slots of `slice_seconds`, default 0.25 s, and a token budget), waits out each slot
locally, returns what it did not use, and settles actual token usage with its next lease.
A 429 seen by any worker pauses the actor's limiter, and every worker learns it at its next
lease (within one slice), dropping slots of the discarded schedule. Ray Data LLM paces each
actor on its own, so N actors send N times the rate; here the cluster shares one limit.

API keys are never shipped through Ray: a `ClientSpec` names the environment variable, and
each worker reads it from its own environment.
"""

from __future__ import annotations

from ..clients import ClientSpec
from .breaker import ClusterBreaker
from .data import LLMMapper
from .limiter import ClusterLimiter, LeasedLimiter
from .run import RayRunConfig, RayWorker, run_on_ray

__all__ = [
    "ClientSpec",
    "ClusterBreaker",
    "ClusterLimiter",
    "LLMMapper",
    "LeasedLimiter",
    "RayRunConfig",
    "RayWorker",
    "run_on_ray",
]
