"""The one configuration object of roadwatch.

Every process (Faust worker, detection producer, operator commands) reads its settings from
environment variables prefixed ``ROADWATCH_`` (or a ``.env`` file) through :class:`Settings`.
It is frozen so that nothing mutates configuration at run time, and API keys are ``SecretStr``
so that a stray ``repr`` or log line shows ``**********`` instead of the key.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.vocabulary import RiskLevel

KeyStrategy = Literal["least_loaded", "round_robin", "weighted", "latency"]


class ApiKeyConfig(BaseModel):
    """One VLM API key with its pool parameters; only ``alias`` is ever shown."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    key: SecretStr = Field(description="The secret API key.")
    alias: str = Field(default="", description="Name shown in logs, metrics and web views.")
    weight: float = Field(default=1.0, gt=0, description="Priority for the weighted strategy.")
    rpm: int | None = Field(default=None, gt=0, description="Requests per minute allowed on this key.")
    tpm: int | None = Field(default=None, gt=0, description="Tokens per minute allowed on this key.")
    max_in_flight: int | None = Field(default=None, gt=0, description="Concurrent calls cap.")
    account: str = Field(
        default="",
        description="The provider account the key belongs to; its keys share the account's quota per model "
        "(DashScope counts RPM/TPM per account and model). Empty: the key is its own account.",
    )
    workspace: str = Field(
        default="", description="A sub-workspace of the account with its own per-model limits (optional)."
    )

    @property
    def account_name(self) -> str:
        """The account whose quota this key spends (its alias when none is declared)."""
        return self.account or self.alias


class QuotaConfig(BaseModel):
    """The provider's limits of one (account, model), or of a sub-workspace of the account."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    account: str = Field(min_length=1, description="The account (as the keys' ``account``).")
    model: str = Field(default="*", min_length=1, description="The model these limits are for; * for every model.")
    workspace: str = Field(default="", description="A sub-workspace's own limits (within the account's).")
    rpm: int | None = Field(default=None, gt=0, description="Requests per minute.")
    tpm: int | None = Field(default=None, gt=0, description="Tokens (input + output) per minute.")
    rps: float | None = Field(default=None, gt=0, description="Requests per second (default rpm / 60).")
    tps: float | None = Field(default=None, gt=0, description="Tokens per second (default tpm / 60).")


class PriceConfig(BaseModel):
    """What one model costs per 1,000 tokens (in any currency; budgets are in the same)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    input_per_1k: float = Field(ge=0)
    output_per_1k: float = Field(ge=0)


def _json_setting(name: str, raw: str, default: object) -> object:
    raw = raw.strip()
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc}") from None


#: Words of the example files' placeholder secrets (deploy/secrets/*.example, deploy/k8s/20-secret.yaml).
PLACEHOLDER_WORDS = ("replace-me", "replace-with", "changeme", "change-me", "placeholder", "example")
MIN_TOKEN_CHARS = 16
#: Bind addresses that mean "every interface": fine to listen on, never an address to reach.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "", "*"})


def secret_problem(value: str, *, min_chars: int = MIN_TOKEN_CHARS) -> str | None:
    """Why ``value`` is no usable secret (empty, a placeholder, too short), or None."""
    stripped = value.strip()
    if not stripped:
        return "is empty"
    if any(word in stripped.lower() for word in PLACEHOLDER_WORDS):
        return "is still the example file's placeholder"
    if len(stripped) < min_chars:
        return f"is shorter than {min_chars} characters"
    return None


def redact_webhook(url: str) -> str:
    """Where a webhook goes, without its path: Slack-style webhooks carry their secret there."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/<path hidden>"


def redact_url(url: str) -> str:
    """``url`` with any password (and user) replaced, for logs and check-config."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def parse_keys(raw: str) -> list[ApiKeyConfig]:
    """Read keys as a JSON list (strings or objects) or as comma/newline separated strings.

    Aliases default to ``key-N`` (1-based) so that an operator can tell keys apart without
    ever seeing one.
    """
    raw = raw.strip()
    if not raw:
        return []
    items: list[object]
    if raw.startswith("["):
        loaded = json.loads(raw)
        if not isinstance(loaded, list):
            raise ValueError("keys JSON must be a list of strings or objects")
        items = loaded
    else:
        items = [part.strip() for part in raw.replace("\n", ",").split(",") if part.strip()]
    keys: list[ApiKeyConfig] = []
    for index, item in enumerate(items, start=1):
        if isinstance(item, str):
            keys.append(ApiKeyConfig(key=SecretStr(item), alias=f"key-{index}"))
        elif isinstance(item, dict):
            cfg = ApiKeyConfig.model_validate(item)
            keys.append(cfg if cfg.alias else cfg.model_copy(update={"alias": f"key-{index}"}))
        else:
            raise ValueError(f"key #{index}: expected a string or an object, got {type(item).__name__}")
    for cfg in keys:
        secret = cfg.key.get_secret_value()
        problem = secret_problem(secret, min_chars=1)
        if problem:
            raise ValueError(f"key {cfg.alias} {problem}")
    aliases = [k.alias for k in keys]
    if len(set(aliases)) != len(aliases):
        raise ValueError(f"duplicate key aliases: {sorted(a for a in aliases if aliases.count(a) > 1)}")
    return keys


class Settings(BaseSettings):
    """All settings; each field maps to ``ROADWATCH_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="ROADWATCH_", env_file=".env", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    # --- Faust / Kafka -------------------------------------------------------------------
    app_id: str = Field(default="roadwatch", description="Faust app id: consumer group and table prefix.")
    kafka_url: str = Field(default="kafka://127.0.0.1:9092", description="Broker URL(s), ';'-separated.")
    topic_prefix: str = Field(default="", description="Prefix of every topic name (several deployments, one cluster).")
    store: str = Field(default="rocksdb://", description="Faust table store: rocksdb:// or memory://.")
    rocksdb_memory_mb: int = Field(
        default=128,
        ge=16,
        description="RocksDB memory of a worker, all tables and partitions together: one block cache, "
        "memtables charged to it.",
    )
    heap_trim_s: float = Field(
        default=60.0,
        ge=0,
        description="Every this many seconds a worker hands its C heap's free pages back to the OS (glibc's "
        "malloc_trim, on a thread; 0: never): what a worked-off backlog freed does not stay resident until the next.",
    )
    data_dir: Path = Field(default=Path(".state/faust"), description="Faust datadir (RocksDB tables).")
    topic_partitions: int = Field(default=8, ge=1, le=1024, description="Partitions of the main topics.")
    topic_replicas: int = Field(default=1, ge=1, le=16, description="Replication factor of new topics.")
    topic_min_insync: int = Field(default=1, ge=1, le=16, description="min.insync.replicas for new topics.")
    session_timeout_s: float = Field(default=10.0, gt=0, description="Consumer session timeout.")
    rebalance_timeout_s: float = Field(
        default=40.0,
        gt=0,
        description="Consumer rebalance timeout: longer than any event can be in flight (a task's deadline), "
        "because a rebalance first waits for the events in flight; a dead worker is noticed by the session timeout.",
    )
    heartbeat_s: float = Field(default=3.0, gt=0, description="Consumer heartbeat interval.")
    commit_interval_s: float = Field(default=1.0, gt=0, description="Offset commit interval.")
    stall_timeout_s: float = Field(
        default=30.0, gt=0, description="A partition with waiting messages and nothing moving this long is stalled."
    )
    max_poll_interval_s: float = Field(
        default=300.0, gt=0, description="Consumer max.poll.interval: a worker silent this long is evicted."
    )
    producer_linger_ms: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description="How long the worker's producer gathers records into one request: each request costs the "
        "worker a socket write and a broker round trip, each hop of a record waits up to this long.",
    )
    fetch_wait_ms: int = Field(
        default=20,
        ge=1,
        le=60_000,
        description="How long the broker may hold a fetch for fetch_min_bytes to gather: the most a record's hop "
        "waits for it (Faust's own: 1500 ms with 1 byte, so a fetch per few records under load).",
    )
    fetch_min_bytes: int = Field(
        default=32_768,
        ge=1,
        le=1 << 24,
        description="Bytes a fetch waits for (up to fetch_wait_ms) before the broker answers; 1 answers at once.",
    )
    web_host: str = Field(default="127.0.0.1", description="Worker web server bind address.")
    web_advertise_host: str | None = Field(
        default=None,
        description="Host other workers reach this one's web server at (they forward /cameras/{id}/ there); "
        "default: web_host, or this machine's address when web_host is a wildcard (0.0.0.0, ::). The pod IP in k8s.",
    )
    web_port: int = Field(default=6066, ge=1, le=65535, description="Worker web server port.")
    web_token: SecretStr | None = Field(
        default=None,
        description="Token every web view and /ws require (Bearer or ?token=); unset: one is made at start "
        "and written to DATA_DIR/web-token.",
    )
    web_auth: bool = Field(
        default=True,
        description="Require the token on every view but /health. `make run` turns it off; off is refused unless "
        "web_host is a loopback address.",
    )
    web_max_body: int = Field(default=16_384, ge=1024, description="Largest HTTP request body accepted, in bytes.")

    # --- Redis ---------------------------------------------------------------------------
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis for the result cache.")
    redis_ttl_s: int = Field(default=300, gt=0, description="TTL of cached results.")
    redis_retry_s: float = Field(default=5.0, gt=0, description="Pause after a Redis error (degrade).")

    # --- images --------------------------------------------------------------------------
    image_store: str = Field(default="file://.state/images", description="Claim-check store: file://DIR or redis://.")
    inline_image_limit: int = Field(default=4_096, ge=0, description="Crops up to this many bytes travel inline.")
    image_ttl_s: int = Field(default=600, gt=0, description="How long stored crops live.")

    # --- task generation -----------------------------------------------------------------
    refresh_s: float = Field(default=20.0, gt=0, description="Re-assess an unchanged group after this.")
    camera_budget_per_min: float = Field(default=30.0, gt=0, description="Per-camera VLM token bucket rate.")
    camera_budget_burst: float = Field(
        default=20.0, ge=1, description="Per-camera token bucket size (bursts of risk; bench/economy.py)."
    )
    cameras_file: Path | None = Field(
        default=None, description="If set, detections of cameras not listed here go to the DLQ (unknown camera)."
    )
    global_budget_per_min: float = Field(
        default=0.0, ge=0, description="Cap on tasks per minute over all cameras (0: none); split among workers."
    )
    task_deadline_s: float = Field(default=30.0, gt=0, description="A task not assessed by then expires.")
    detection_ttl_s: float = Field(
        default=0.0, ge=0, description="Detections kept for the result join (0: max(120 s, 4 task deadlines))."
    )
    result_ttl_s: float = Field(default=3600.0, gt=0, description="Finished tasks remembered for deduplication.")
    min_group_score: float = Field(default=0.3, ge=0, le=1, description="Groups below this interest get no task.")
    spend_write_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="A VLM spend row (a camera's, an account slice's) is written to the vlm_spend table at most "
        "this often; other workers see the spend, and a crash forgets it, up to this late.",
    )
    state_write_s: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="A camera's task-generator state is written to its table (and changelog) at most this often "
        "unless a frame made a task or a measured alert; a crash or rebalance rolls its quiet frames back by up to "
        "this long (0: on every change). Alerts are written through.",
    )

    # --- VLM -----------------------------------------------------------------------------
    vlm_base_url: str = Field(default="http://127.0.0.1:8089/v1", description="OpenAI-compatible base URL.")
    vlm_model: str = Field(default="qwen-vl-plus", description="Model name sent to the endpoint.")
    vlm_keys: SecretStr = Field(
        default=SecretStr(""), description="API keys: JSON list or comma-separated. Never logged (nor in a repr)."
    )
    vlm_keys_file: Path | None = Field(default=None, description="File with keys (same format), e.g. a Secret.")
    vlm_timeout_s: float = Field(default=20.0, gt=0, description="Per-request timeout.")
    vlm_concurrency: int = Field(default=50, ge=1, le=1000, description="Concurrent VLM calls per worker.")
    vlm_max_retries: int = Field(default=2, ge=0, le=10, description="Retries on another key.")
    vlm_backoff_base_s: float = Field(default=2.0, ge=0, description="Backoff base: base**attempt seconds.")
    vlm_max_tokens: int = Field(default=300, gt=0, description="max_tokens of each completion.")
    vlm_models: str = Field(
        default="",
        description="A model chain, comma-separated (qwen-vl-max,qwen-vl-plus): when the first model's quota is "
        "spent or it fails, the next serves. Empty: vlm_model alone.",
    )
    vlm_first_model_min_interest: float = Field(
        default=0.0, ge=0, le=1, description="Only groups at least this interesting may use the chain's first model."
    )
    vlm_quotas: str = Field(
        default="",
        description='Limits per (account, model), JSON list: [{"account": "a", "model": "qwen-vl-max", "rpm": 120, '
        '"tpm": 100000}]; a "workspace" entry limits a sub-workspace within the account.',
    )
    vlm_smoothing: bool = Field(
        default=True,
        description="Spread each quota's calls evenly over the second and ramp up from idle (DashScope refuses "
        "bursts); off: only the per-minute windows.",
    )
    vlm_ramp_start: float = Field(
        default=0.25, gt=0, le=1, description="From idle, a quota starts at this fraction of its per-second rate."
    )
    vlm_ramp_growth: float = Field(
        default=1.5, gt=1, le=4, description="A quota's calls per second may grow by this factor each second."
    )
    vlm_server_queue: bool = Field(
        default=False,
        description="Send X-DashScope-Queue-Enable: true, so the provider queues bursts instead of refusing them.",
    )
    vlm_prices: str = Field(
        default="",
        description='Price per model, JSON: {"qwen-vl-max": {"input_per_1k": 0.003, "output_per_1k": 0.009}}.',
    )
    vlm_account_daily_budget: str = Field(
        default="", description='Daily spend cap per account, JSON: {"acct-a": 5.0} (UTC days; same currency).'
    )
    camera_daily_budget: float | None = Field(default=None, gt=0, description="Daily spend cap per camera.")
    vlm_max_crop_pixels: int = Field(
        default=401_408,
        ge=3136,
        description="Crops larger than this (width x height) are downscaled before encoding: image tokens grow "
        "with the area (one per 28x28 px on Qwen-VL), so this caps a call's cost.",
    )
    key_strategy: KeyStrategy = Field(default="least_loaded", description="Key selection strategy.")
    cooldown_min_s: float = Field(default=10.0, ge=0, description="Shortest cooldown after a failure.")
    cooldown_max_s: float = Field(default=120.0, ge=0, description="Longest cooldown after a failure.")

    # --- alerts --------------------------------------------------------------------------
    alert_level: RiskLevel = Field(default="high", description="Results at or above this raise an alert.")
    alert_cooldown_s: float = Field(
        default=60.0, ge=0, description="Alerts for the same group within this are merged into one."
    )
    measured_alert_level: RiskLevel = Field(
        default="high",
        description="A calibrated camera's measured conflict at or above this alerts at once, before the VLM "
        "answers (high: TTC or PET 1 s or less; critical: 0.5 s). The conflict's task (its two road users get a "
        "group of their own when no group holds both) is answered by the VLM, and the answer confirms, escalates or "
        "downgrades that same alert; when the camera budget refuses the task or the call fails, the alert stays "
        "measured only. 'low' alerts on every conflict.",
    )
    alert_webhook_url: str | None = Field(default=None, description="POST every published alert here (JSON).")
    alert_webhook_concurrency: int = Field(default=16, ge=1, le=256, description="Webhook deliveries at once.")
    aggregate_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Results aggregated at once: an alert waits for its result's table record to reach the broker "
        "(a produce round trip), and the aggregator goes on with other results meanwhile.",
    )
    alert_webhook_max_age_s: float = Field(
        default=300.0, gt=0, description="An alert older than this is no longer sent to the webhook (counted)."
    )

    @field_validator("heap_trim_s")
    @classmethod
    def _trim_interval(cls, value: float) -> float:
        # malloc_trim walks the whole heap under its lock: every few milliseconds it would stall the worker
        if 0 < value < 1:
            raise ValueError(f"heap_trim_s must be 0 (never) or at least 1 second, got {value}")
        return value

    @field_validator("kafka_url")
    @classmethod
    def _kafka_scheme(cls, value: str) -> str:
        for url in value.split(";"):
            if not url.startswith("kafka://"):
                raise ValueError(f"kafka_url must start with kafka://, got {url!r}")
        return value

    @model_validator(mode="after")
    def _no_placeholder_token(self) -> Settings:
        if self.web_auth and self.web_token is not None:
            problem = secret_problem(self.web_token.get_secret_value())
            if problem:
                raise ValueError(
                    f"ROADWATCH_WEB_TOKEN {problem}: set a long random token (e.g. `openssl rand -hex 24`), "
                    "unset it to have one made in DATA_DIR/web-token, or turn auth off with ROADWATCH_WEB_AUTH=false"
                )
        return self

    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> Settings:
        if not self.web_auth and not _loopback(self.web_host):
            raise ValueError(
                f"ROADWATCH_WEB_AUTH=false with ROADWATCH_WEB_HOST={self.web_host}: without auth the views "
                "(and key pool commands) would be open to every host that reaches it; turn auth off only "
                "on a loopback address (127.0.0.1, ::1, localhost)"
            )
        return self

    @model_validator(mode="after")
    def _rebalance_outlasts_a_task(self) -> Settings:
        if self.rebalance_timeout_s <= self.task_deadline_s:
            raise ValueError(
                f"rebalance_timeout_s ({self.rebalance_timeout_s}) must exceed task_deadline_s "
                f"({self.task_deadline_s}): a rebalance waits for the tasks in flight, and a worker slower "
                "than the timeout is evicted"
            )
        return self

    @model_validator(mode="after")
    def _providers_consistent(self) -> Settings:
        """Quotas, prices and budgets that cannot mean what they say are refused at start."""
        quotas, prices, budgets = self.quotas(), self.prices(), self.account_budgets()
        chain = self.model_chain()
        if len(set(chain)) != len(chain):
            raise ValueError(f"vlm_models names a model twice: {chain}")
        seen = set()
        for q in quotas:
            if q.rpm is None and q.tpm is None and q.rps is None and q.tps is None:
                raise ValueError(f"vlm_quotas: account {q.account!r} model {q.model!r} declares no limit")
            ident = (q.account, q.workspace, q.model)
            if ident in seen:
                raise ValueError(f"vlm_quotas: account {q.account!r} model {q.model!r} is declared twice")
            seen.add(ident)
        if budgets or self.camera_daily_budget is not None:
            unpriced = [m for m in chain if m not in prices]
            if unpriced:
                raise ValueError(
                    f"a daily budget is set but vlm_prices has no price for {unpriced}: spend could not be counted"
                )
        return self

    @model_validator(mode="after")
    def _cooldowns_ordered(self) -> Settings:
        if self.cooldown_min_s > self.cooldown_max_s:
            raise ValueError(
                f"cooldown_min_s ({self.cooldown_min_s}) must not exceed cooldown_max_s ({self.cooldown_max_s})"
            )
        return self

    def advertised_web_host(self) -> str:
        """Where other workers reach this one: never a wildcard address, which reaches nothing."""
        if self.web_advertise_host:
            return self.web_advertise_host
        if self.web_host in WILDCARD_HOSTS:
            try:
                address = socket.gethostbyname(socket.gethostname())
            except OSError:
                address = ""
            # Debian maps the host name to 127.0.1.1: loopback reaches no other machine, a name may
            if address and not address.startswith("127."):
                return address
            return socket.getfqdn()
        return self.web_host

    def detection_ttl(self) -> float:
        """How long a detection waits for its results: longer than any task can take."""
        return self.detection_ttl_s or max(120.0, 4 * self.task_deadline_s)

    @property
    def redis_prefix(self) -> str:
        """Prefix of this deployment's Redis keys and channel (``roadwatch:`` by default)."""
        return f"{self.app_id}{self.topic_prefix}:"

    @property
    def bootstrap_servers(self) -> str:
        """The broker list as aiokafka wants it (host:port,host:port)."""
        return ",".join(url.removeprefix("kafka://") for url in self.kafka_url.split(";"))

    def model_chain(self) -> list[str]:
        """The models to try, best first."""
        chain = [m.strip() for m in self.vlm_models.split(",") if m.strip()]
        return chain or [self.vlm_model]

    def quotas(self) -> list[QuotaConfig]:
        """The declared (account, model) limits."""
        loaded = _json_setting("vlm_quotas", self.vlm_quotas, [])
        if not isinstance(loaded, list):
            raise ValueError("vlm_quotas must be a JSON list of objects")
        return [QuotaConfig.model_validate(q) for q in loaded]

    def prices(self) -> dict[str, PriceConfig]:
        """The price table, per model."""
        loaded = _json_setting("vlm_prices", self.vlm_prices, {})
        if not isinstance(loaded, dict):
            raise ValueError("vlm_prices must be a JSON object: model -> {input_per_1k, output_per_1k}")
        return {str(m): PriceConfig.model_validate(p) for m, p in loaded.items()}

    def account_budgets(self) -> dict[str, float]:
        """Daily spend caps per account."""
        loaded = _json_setting("vlm_account_daily_budget", self.vlm_account_daily_budget, {})
        if not isinstance(loaded, dict) or not all(isinstance(v, int | float) and v > 0 for v in loaded.values()):
            raise ValueError("vlm_account_daily_budget must be a JSON object: account -> a positive amount")
        return {str(a): float(v) for a, v in loaded.items()}

    def api_keys(self) -> list[ApiKeyConfig]:
        """The configured keys: the file wins over the variable when both are set."""
        if self.vlm_keys_file is not None:
            return parse_keys(self.vlm_keys_file.read_text())
        return parse_keys(self.vlm_keys.get_secret_value())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
