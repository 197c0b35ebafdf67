"""llmbatch: run thousands to millions of LLM requests as fast as the provider allows,
and never lose a result.

    from llmbatch import BatchProcessor, BatchProcessorConfig, BatchRequest, CompletionRequest
    results = BatchProcessor(client).process_batch(
        [BatchRequest("q1", CompletionRequest(prompt="Hello"))])
"""

from .clients.base import LLMClient
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
    RateLimitError,
    RequestTimeoutError,
    RetryableError,
    ServerError,
    TokenBudgetError,
    UnsupportedRequestError,
    error_code,
)
from .events import (
    Admission,
    BatchFinished,
    BatchStarted,
    Event,
    Listener,
    Permit,
    RequestFinished,
    RequestRetrying,
    RequestStarted,
)
from .limiter import RateLimiter, RateLimiterStatus, Reservation, estimate_tokens
from .processor import (
    BatchInterrupted,
    BatchProcessor,
    BatchProcessorConfig,
    BatchProcessorWithProgress,
)
from .progress import ProgressLogger, ProgressTracker, RichProgress
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
    "Engine",
    "EngineConfig",
    "ErrorHandler",
    "Event",
    "FatalError",
    "InvalidResponseError",
    "LLMBatchError",
    "LLMClient",
    "Listener",
    "OverloadedError",
    "Permit",
    "ProgressLogger",
    "ProgressTracker",
    "PromptSection",
    "RateLimitError",
    "RateLimitInfo",
    "RateLimiter",
    "RateLimiterStatus",
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
    "parse_retry_after",
]
