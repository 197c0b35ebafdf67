"""llmbatch: run thousands to millions of LLM requests as fast as the provider allows,
and never lose a result.

    # A whole run, resumable, any way of executing it (realtime, Ray, batch API, deadline):
    summary = llmbatch.run(llmbatch.RunConfig(input="in.jsonl", output="out.jsonl",
                                              model="gpt-4o-mini", batch_api=True))

    # The seed's processor, for requests held in memory:
    from llmbatch import BatchProcessor, BatchProcessorConfig, BatchRequest, CompletionRequest
    results = BatchProcessor(client).process_batch(
        [BatchRequest("q1", CompletionRequest(prompt="Hello"))])
"""

from .admission import Admission, AdmissionChain, Feedback, Permit, feedback
from .batch_api import BatchAPIConfig, BatchAPIRunner
from .breaker import Outage, OutageBreaker
from .budget import Budget, BudgetExceededError
from .clients.base import LLMClient
from .concurrency import ConcurrencyLimiter
from .engine import Engine, EngineConfig
from .errorlog import ErrorHandler
from .errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    BatchAPIError,
    BatchCancelledError,
    BatchTimeoutError,
    CapacityError,
    ClientContractError,
    FatalError,
    InvalidOutputError,
    InvalidResponseError,
    LLMBatchError,
    OverloadedError,
    ProviderOutageError,
    RateLimitError,
    RefusalError,
    ReplyError,
    RequestTimeoutError,
    RetryableError,
    ServerError,
    TokenLimitError,
    TruncatedReplyError,
    UnsupportedRequestError,
    error_code,
)
from .events import (
    AttemptFinished,
    AttemptQueued,
    BatchFinished,
    BatchStarted,
    Event,
    Listener,
    ProviderOutage,
    RequestFinished,
    RequestRetrying,
    RequestStarted,
)
from .limiter import (
    Estimate,
    RateLimiter,
    RateLimiterStatus,
    RatePermit,
    estimate_tokens,
)
from .metrics import MetricsListener
from .pipeline import (
    BatchAPIFailed,
    ConfigError,
    DeadlineOutcome,
    Plan,
    RunConfig,
    RunControl,
    RunSummary,
    arun,
    plan,
    run,
)
from .pricing import FixedPrices, GenaiPrices, Pricer, PriceSource
from .processor import (
    BatchInterrupted,
    BatchProcessor,
    BatchProcessorConfig,
    BatchProcessorWithProgress,
)
from .progress import ProgressLogger, ProgressTracker, RichProgress
from .rate_control import CubicRate
from .replies import ReplyPolicy, check_reply
from .retry import RetryPolicy, parse_retry_after
from .schema import Schema, SchemaError, SchemaViolation
from .stats import BatchStats, StatsCollector, calculate_batch_stats
from .throttled import ThrottledLLMClient
from .types import (
    BatchProgress,
    BatchRequest,
    BatchResult,
    CompletionRequest,
    CompletionResponse,
    PromptSection,
    RateLimitInfo,
    Timing,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "Admission",
    "AdmissionChain",
    "AttemptFinished",
    "AttemptQueued",
    "AuthenticationError",
    "BadRequestError",
    "BatchAPIConfig",
    "BatchAPIError",
    "BatchAPIRunner",
    "BatchCancelledError",
    "BatchFinished",
    "BatchInterrupted",
    "BatchProcessor",
    "BatchProcessorConfig",
    "BatchProcessorWithProgress",
    "BatchProgress",
    "BatchRequest",
    "BatchResult",
    "BatchStarted",
    "BatchStats",
    "BatchTimeoutError",
    "CapacityError",
    "ClientContractError",
    "CompletionRequest",
    "CompletionResponse",
    "ConcurrencyLimiter",
    "CubicRate",
    "Engine",
    "EngineConfig",
    "ErrorHandler",
    "Estimate",
    "Event",
    "FatalError",
    "Feedback",
    "InvalidOutputError",
    "InvalidResponseError",
    "LLMBatchError",
    "LLMClient",
    "Listener",
    "MetricsListener",
    "Outage",
    "OutageBreaker",
    "OverloadedError",
    "Permit",
    "ProgressLogger",
    "ProgressTracker",
    "PromptSection",
    "ProviderOutage",
    "ProviderOutageError",
    "RateLimitError",
    "RateLimitInfo",
    "RateLimiter",
    "RateLimiterStatus",
    "RatePermit",
    "RefusalError",
    "ReplyError",
    "ReplyPolicy",
    "RequestFinished",
    "RequestRetrying",
    "RequestStarted",
    "RequestTimeoutError",
    "RetryPolicy",
    "RetryableError",
    "RichProgress",
    "Schema",
    "SchemaError",
    "SchemaViolation",
    "ServerError",
    "StatsCollector",
    "ThrottledLLMClient",
    "Timing",
    "TokenLimitError",
    "TruncatedReplyError",
    "UnsupportedRequestError",
    "Usage",
    "__version__",
    "calculate_batch_stats",
    "check_reply",
    "error_code",
    "estimate_tokens",
    "feedback",
    "parse_retry_after",
]

# Cost: prices and the budget (`llmbatch.pricing`, `llmbatch.budget`).
__all__ += [
    "Budget",
    "BudgetExceededError",
    "FixedPrices",
    "GenaiPrices",
    "PriceSource",
    "Pricer",
]

# The run pipeline (`llmbatch.pipeline`): what `llmbatch run` and `llmbatch plan` do.
__all__ += [
    "BatchAPIFailed",
    "ConfigError",
    "DeadlineOutcome",
    "Plan",
    "RunConfig",
    "RunControl",
    "RunSummary",
    "arun",
    "plan",
    "run",
]
