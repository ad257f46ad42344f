"""Engine-neutral failures; the server maps each to one HTTP status and OpenAI error code."""

from __future__ import annotations


class BackendError(Exception):
    """Base class: `message` is safe to show to the caller."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidParameter(BackendError):
    """The request asks for something this model or engine cannot honour."""


class ContextLengthExceeded(BackendError):
    def __init__(self, prompt_tokens: int, max_tokens: int | None, context_length: int) -> None:
        if max_tokens is None:
            message = (
                f"This model's maximum context length is {context_length} tokens, but the prompt "
                f"has {prompt_tokens} tokens, leaving no room for a completion."
            )
            param = "messages"
        else:
            message = (
                f"This model's maximum context length is {context_length} tokens. However, you "
                f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
                f"{max_tokens} for the completion). Please reduce the prompt or max_tokens."
            )
            param = "max_tokens"
        super().__init__(message, param=param)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length


class InputTooLong(ContextLengthExceeded):
    """An embedding input longer than the model embeds in one piece (never truncated)."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        BackendError.__init__(
            self, f"Input {index} has {tokens} tokens, but this model embeds at most {limit} "
            "tokens per input. Please shorten or split the input.", param="input")
        self.prompt_tokens = tokens
        self.max_tokens = None
        self.context_length = limit


class DeadlineExceeded(BackendError):
    """The request ran past its GenerationRequest.deadline; `seconds` is the limit it had."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request took longer than its limit of {seconds:g} seconds")
        self.seconds = seconds


class ModelNotFound(BackendError):
    pass


class Busy(BackendError):
    """The wait queue is full; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(BackendError):
    """Not now: the model is loading, or waiting for room; retry after `retry_after` s."""

    def __init__(self, message: str, retry_after: int = 5, code: str = "model_not_ready") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class ModelLoadFailed(BackendError):
    """The model's last load failed; retried by a request after a back-off, or on demand."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"model {model} failed to load: {reason}", param="model")
        self.reason = reason


class ModelTooLarge(BackendError):
    """The model needs more memory than the whole budget: it can never be loaded here."""

    def __init__(self, model: str, need: int, device: str, budget: int) -> None:
        from lokal.backends.budget import human

        super().__init__(
            f"model {model} needs {human(need)} of {device} memory, more than the whole "
            f"memory budget of {human(budget)}; it cannot be loaded on this server (raise "
            "--memory-budget, or lower its context_length, parallel or prompt_cache_mib)",
            param="model")


class ModelPinned(BackendError):
    """An unload of a pinned model that did not say it meant it."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model} is pinned; unload it with ?force=true", param="model")


class EngineDown(BackendError):
    """The engine died (its thread or process is gone): 503 until lokal is restarted, and
    /health/live fails so that an orchestrator restarts it."""


class EngineFailure(BackendError):
    """A real fault inside the engine; the message is logged, not shown."""


class BackendUnavailable(BackendError):
    """No engine can serve this model on this machine (raised at start-up)."""
