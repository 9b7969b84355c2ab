"""The exceptions of roadwatch: one root, one class per way things go wrong."""

from __future__ import annotations

from streams.vocabulary import VlmErrorKind


class RoadwatchError(Exception):
    """Root of every error roadwatch raises on purpose."""


class ConfigError(RoadwatchError):
    """Configuration is missing or wrong; the message says which setting and why."""


class InvalidRecord(RoadwatchError):
    """A message body is not a valid record of the expected type (it goes to the DLQ)."""


class ImageMissing(RoadwatchError):
    """A claim-check image reference no longer resolves (expired or never stored)."""


class BadImage(ImageMissing):
    """A crop that resolves but is no usable image: corrupt, not JPEG/PNG, or too large."""


class NoKeyAvailable(RoadwatchError):
    """Every API key is cooling or disabled and the task's deadline passed while waiting."""


class VlmError(RoadwatchError):
    """A VLM call failed; ``kind`` says how, which decides the key pool's reaction.

    ``billed``: the provider may have charged for it (it answered 200, or the call timed out after
    it was sent), so the budgets book it: at ``usage`` (prompt, completion tokens) when the answer
    said, else at the call's worst case."""

    def __init__(
        self,
        kind: VlmErrorKind,
        message: str,
        *,
        status: int = 0,
        retry_after: float | None = None,
        billed: bool = False,
        usage: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.billed = billed
        self.usage = usage


class UnparseableAnswer(RoadwatchError):
    """The VLM answered, but not with the JSON risk assessment the prompt asked for."""
