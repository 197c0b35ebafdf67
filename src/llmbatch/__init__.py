"""llmbatch: run thousands to millions of LLM requests as fast as the provider allows,
and never lose a result.

    from llmbatch import BatchProcessor, BatchProcessorConfig, BatchRequest, CompletionRequest
    results = BatchProcessor(client).process_batch(
        [BatchRequest("q1", CompletionRequest(prompt="Hello"))])
"""

from .admission import Admission, AdmissionChain, Feedback, Permit, feedback
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
    BatchCancelledError,
    BatchTimeoutError,
    FatalError,
    InvalidResponseError,
    LLMBatchError,
    OverloadedError,
    ProviderOutageError,
    RateLimitError,
    RequestTimeoutError,
    RetryableError,
    ServerError,
    TokenBudgetError,
    UnsupportedRequestError,
    error_code,
)
from .events import (
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
    Reservation,
    estimate_tokens,
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
from .retry import RetryPolicy, parse_retry_after
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
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "Admission",
    "AdmissionChain",
    "AuthenticationError",
    "BadRequestError",
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
    "InvalidResponseError",
    "LLMBatchError",
    "LLMClient",
    "Listener",
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
    "RequestFinished",
    "RequestRetrying",
    "RequestStarted",
    "RequestTimeoutError",
    "Reservation",
    "RetryPolicy",
    "RetryableError",
    "RichProgress",
    "ServerError",
    "StatsCollector",
    "ThrottledLLMClient",
    "TokenBudgetError",
    "UnsupportedRequestError",
    "Usage",
    "__version__",
    "calculate_batch_stats",
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
