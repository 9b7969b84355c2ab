"""The VLM call: OpenAI-compatible chat completions with the crop as a base64 data URL.

Works unchanged against DashScope's compatible mode (``.../compatible-mode/v1``, models
``qwen-vl-plus`` / ``qwen-vl-max``), OpenAI, vLLM and Ollama, and the simulated endpoint in
``sim.vlm``. One aiohttp session per worker with a bounded connection pool. Every failure is a
:class:`VlmError` whose ``kind`` tells the key pool how to react, following DashScope's error
codes (``docs/ARCHITECTURE.md``, "The key pool"):

========== ============================================= ==================================
kind       answer                                        pool's reaction
========== ============================================= ==================================
auth       401 InvalidApiKey, 403                        disable the key
quota      429 insufficient_quota (a spent balance)      disable until the window resets
arrearage  400 Arrearage                                 disable, loudly
rate       429 Throttling.RateQuota / Throttling /       cool the (account, model) (Retry-After
           Throttling.AllocationQuota (RPM/TPM)          wins)
burst      429 "Request rate increased too quickly"      cool the (account, model) a second, ramp
content    400 DataInspectionFailed                      failed result, no retry
request    other 4xx                                     failed result, no retry
server     5xx, timeout, connection reset                retry on another key
parse      2xx but no JSON assessment                    failed result, no retry
========== ============================================= ==================================
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from agents.answer_parser import Assessment, parse_answer
from streams.errors import UnparseableAnswer, VlmError
from streams.vocabulary import VlmErrorKind

SYSTEM_PROMPT = (
    "You are a traffic safety analyst looking at a crop from a fixed traffic camera. "
    "Judge the collision risk between the road users in the image. Answer with one JSON object "
    'and nothing else: {"risk_level": "none|low|medium|high|critical", "risk_score": <0..1>, '
    '"summary": "<one sentence>"}.'
)

#: Error kinds after which another key may succeed.
RETRYABLE: frozenset[VlmErrorKind] = frozenset({"server", "rate", "burst", "auth", "quota", "arrearage", "model"})
#: Failures that say nothing about the request, only about the key that carried it: the task moves
#: to another key at once and keeps its retries for server failures.
KEY_FAULTS: frozenset[VlmErrorKind] = frozenset({"rate", "burst", "auth", "quota", "arrearage", "model"})
#: DashScope's header that queues a burst on the provider's side instead of refusing it.
QUEUE_HEADER = "X-DashScope-Queue-Enable"


@dataclass(frozen=True)
class VlmAnswer:
    """A successful call: the assessment and what it cost."""

    assessment: Assessment
    latency_ms: float
    #: The provider's ``usage``; None where the answer had none (the budgets then book the estimate).
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str


def build_request(model: str, jpeg: bytes, context: str, max_tokens: int) -> dict[str, Any]:
    """The chat-completions body: system prompt, context text and the crop as a data URL."""
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": context},
                ],
            },
        ],
        "max_tokens": max_tokens,
        "temperature": 0.1,
    }


#: The longest Retry-After believed (a day: a daily quota's reset): a larger or endless one would
#: cool a quota that every worker shares, through the key_pool table, past any restart.
RETRY_AFTER_MAX_S = 86_400.0


def _retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110)."""
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(str(value))
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(RETRY_AFTER_MAX_S, max(0.0, seconds))


#: Words of a 429 that say it clears by itself: a rate limit, however it is worded.
TRANSIENT_WORDS = (
    "token-limit",
    "token limit",
    "rate limit",
    "rate-limit",
    "ratelimit",
    "retry",
    "per minute",
    "tpm",
    "rpm",
)


#: Words of a 400 from content moderation (DashScope: DataInspectionFailed, data_inspection_failed).
MODERATION_WORDS = ("datainspectionfailed", "data_inspection_failed", "inappropriate content")


def _no_such_model(text: str) -> bool:
    """Whether an error says the model does not exist or is not available (OpenAI, DashScope, vLLM)."""
    if "model_not_found" in text or "modelnotfound" in text:
        return True
    return "model" in text and any(w in text for w in ("not exist", "does not exist", "not found", "not supported"))


def _transient(text: str, retry_after: float | None) -> bool:
    """Whether a 429 worded like an empty balance is a rate limit (a wait is given, or named)."""
    return retry_after is not None or any(word in text for word in TRANSIENT_WORDS)


def classify_error(status: int, body: str, headers: Any = None) -> VlmError:
    """Map an HTTP error answer to a VlmError kind (OpenAI and DashScope bodies alike)."""
    code, message = "", body[:300]
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else {}
        if isinstance(err, dict):
            code = str(err.get("code") or err.get("type") or "")
            message = str(err.get("message") or message)[:300]
    except ValueError:
        pass  # an HTML error page or plain text: classify by status alone
    text = f"{code} {message}".lower()
    retry_after = _retry_after(headers)
    label = f"HTTP {status} {code}".strip()
    if status in (401, 403):
        return VlmError("auth", f"{label}: key rejected", status=status)
    if status == 429:
        no_balance = "insufficient_quota" in text or "check your plan and billing" in text
        if no_balance and not _transient(text, retry_after):
            # OpenAI: no balance left. The same words come from DashScope's compatible mode for its
            # per-minute token limit (a link to error-code#token-limit) and from Gemini's for a
            # free tier's ("Please retry in 30s"): those clear within a minute, and taking them for
            # an empty balance switched every key of the account off for an hour
            return VlmError("quota", f"{label}: quota exhausted", status=status, retry_after=retry_after)
        if "increased too quickly" in text:
            return VlmError("burst", f"{label}: traffic grew too fast", status=status, retry_after=retry_after)
        # RateQuota (RPM/RPS) and AllocationQuota (TPM/TPS) are the account's per-model rate limits:
        # both clear within about a minute
        return VlmError("rate", f"{label}: rate limited", status=status, retry_after=retry_after)
    if status in (400, 404) and _no_such_model(text):
        # the account does not serve this model (a typo, a model retired, one not enabled for
        # it): the model chain's next model serves instead of every task failing
        return VlmError("model", f"{label}: model not served: {message}", status=status)
    if status == 400 and "arrearage" in text:
        return VlmError("arrearage", f"{label}: account in arrears", status=status)
    if status == 400 and any(word in text for word in MODERATION_WORDS):
        return VlmError("content", f"{label}: content moderation blocked the request", status=status)
    if 400 <= status < 500:
        return VlmError("request", f"{label}: {message}", status=status)
    return VlmError("server", f"{label}: server error", status=status, retry_after=retry_after)


class VlmClient:
    """One per worker: a pooled aiohttp session against an OpenAI-compatible base URL."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        timeout_s: float,
        pool_size: int,
        max_tokens: int,
        server_queue: bool = False,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.server_queue = server_queue
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.pool_size = pool_size
        self.max_tokens = max_tokens
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.pool_size, ttl_dns_cache=300),
                timeout=self.timeout,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def assess(self, api_key: str, jpeg: bytes, context: str, *, model: str | None = None) -> VlmAnswer:
        """Call ``model`` (default: the client's) once with ``api_key``; raises VlmError with the kind of failure."""
        model = model or self.model
        body = build_request(model, jpeg, context, self.max_tokens)
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        if self.server_queue:
            headers[QUEUE_HEADER] = "true"
        started = time.perf_counter()
        try:
            async with self.session().post(self.url, json=body, headers=headers) as resp:
                text = await resp.text(errors="replace")
                if resp.status != 200:
                    raise classify_error(resp.status, text, resp.headers)
        except aiohttp.ConnectionTimeoutError as exc:  # never connected: nothing sent, nothing billed
            raise VlmError("server", f"connect timeout after {self.timeout.total}s") from exc
        except TimeoutError as exc:  # the provider may have answered (and billed) after we gave up
            raise VlmError("server", f"timeout after {self.timeout.total}s", billed=True) from exc
        except asyncio.CancelledError:
            raise
        except aiohttp.ClientError as exc:
            raise VlmError("server", f"connection error: {type(exc).__name__}: {exc}") from exc
        latency_ms = (time.perf_counter() - started) * 1000.0
        try:
            data = json.loads(text)
            content = data["choices"][0]["message"]["content"]
            if isinstance(content, list):  # some servers return content parts
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise VlmError("parse", f"not a chat completion: {text[:160]!r}", status=200, billed=True) from exc
        usage = _usage(data)
        try:
            assessment = parse_answer(str(content))
        except UnparseableAnswer as exc:  # an answer all the same: the provider billed it
            raise VlmError("parse", str(exc), status=200, billed=True, usage=usage) from exc
        return VlmAnswer(
            assessment=assessment,
            latency_ms=latency_ms,
            prompt_tokens=None if usage is None else usage[0],
            completion_tokens=None if usage is None else usage[1],
            model=str(data.get("model") or model),
        )


def _usage(data: Any) -> tuple[int, int] | None:
    """The answer's (prompt, completion) tokens, None where it has no usable ``usage``."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    try:
        prompt = int(usage["prompt_tokens"])
        if usage.get("completion_tokens") is not None:
            completion = int(usage["completion_tokens"])
        else:  # some servers give only the total; neither: unknown, so the estimate is booked, not 0
            completion = int(usage["total_tokens"]) - prompt
    except (KeyError, TypeError, ValueError):
        return None
    return (prompt, completion) if prompt >= 0 and completion >= 0 else None
