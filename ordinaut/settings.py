"""Ordinaut settings: everything comes from the environment (and an optional .env file).

Development (DEBUG=1) needs nothing: without DATABASE_URL / REDIS_URL the app runs its own
PostgreSQL and Redis under var/. Production (DEBUG unset or 0) refuses to start without a
strong SECRET_KEY and a DATABASE_URL, and otherwise serves plain HTTP behind a proxy.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from ordinaut.database import database_settings

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("ORDINAUT_VAR_DIR", BASE_DIR / "var"))

env = environ.Env()
# ORDINAUT_ENV_FILE picks another file ("" reads none, which the tests use); values already
# in the environment win over the file.
_env_file = os.environ.get("ORDINAUT_ENV_FILE", str(BASE_DIR / ".env"))
if _env_file and Path(_env_file).is_file():
    environ.Env.read_env(_env_file)

DEBUG = env.bool("DEBUG", default=False)

# -- secrets --------------------------------------------------------------------------------
MIN_SECRET_KEY_LENGTH = 50
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY and DEBUG:
    # A fixed development key: sessions survive restarts; never valid with DEBUG off.
    SECRET_KEY = "ordinaut-development-only-insecure-key-do-not-use-in-production-0000"  # noqa: S105
if len(SECRET_KEY) < MIN_SECRET_KEY_LENGTH:
    raise ImproperlyConfigured(
        f"SECRET_KEY must be set to at least {MIN_SECRET_KEY_LENGTH} random characters when "
        "DEBUG is off (generate one with: python -c 'import secrets; "
        "print(secrets.token_urlsafe(64))')"
    )

# Keys for other uses are derived from SECRET_KEY, one per use, unless set: a key that leaks
# (a receiver's, a token verifier's) reveals neither SECRET_KEY nor the others. A key that is
# set must be long enough to resist guessing.
MIN_SIGNING_KEY_BYTES = 32


def _signing_key(variable: str, derived: str) -> str:
    value = env.str(variable, default="")
    if not value:
        return derived
    if not DEBUG and len(value.encode()) < MIN_SIGNING_KEY_BYTES:
        raise ImproperlyConfigured(
            f"{variable} must be at least {MIN_SIGNING_KEY_BYTES} bytes when DEBUG is off "
            "(leave it unset to derive one from SECRET_KEY)"
        )
    return value


def _derive(label: str) -> str:
    return hmac.new(SECRET_KEY.encode(), label.encode(), hashlib.sha256).hexdigest()


# We never build absolute URLs from the Host header (no password-reset mails), so the
# default accepts any host and leaves host filtering to the reverse proxy; narrow it here.
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["*"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# TLS belongs to the reverse proxy; these are opt-in.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
# Forced on for the whole site; without them, every cookie set on a request that came over
# HTTPS is still marked Secure (ordinaut.middleware.SecureCookiesMiddleware).
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
# Take the client address for the audit log from X-Forwarded-For (only behind a proxy).
TRUST_X_FORWARDED_FOR = env.bool("TRUST_X_FORWARDED_FOR", default=False)
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Browser origins allowed to call the API (https://app.example.com, ...); none by default:
# agents are servers, and a browser app is a choice the operator makes. Credentials are bearer
# tokens, never cookies, so no CORS_ALLOW_CREDENTIALS.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/(?!admin/).*$"  # never the admin's session-authenticated pages

# /metrics answers a bearer METRICS_TOKEN, or a client in METRICS_ALLOWED_NETS (loopback by
# default, for a Prometheus on the same host); anyone else gets 401/403.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
try:
    METRICS_ALLOWED_NETS = [
        ipaddress.ip_network(net.strip(), strict=False)
        for net in env.list("METRICS_ALLOWED_NETS", default=["127.0.0.0/8", "::1/128"])
        if net.strip()
    ]
except ValueError as exc:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_NETS: {exc}") from exc
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# -- applications -----------------------------------------------------------------------------
INSTALLED_APPS = [
    "ordinaut.apps.AdminConfig",  # django.contrib.admin, discovered by the URLconf
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "corsheaders",
    "ordinaut.apps.OrdinautConfig",
    "agents",
    "tasks",
    "pipelines",
    "audit",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "ordinaut.middleware.CorrelationIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Before CommonMiddleware, so a preflight is answered with the CORS headers.
    "corsheaders.middleware.CorsMiddleware",
    "ordinaut.middleware.SecureCookiesMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "ordinaut.middleware.AdminSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "ordinaut.middleware.AdminAuthenticationMiddleware",
    "ordinaut.middleware.AdminMessageMiddleware",
    "ordinaut.middleware.ConsoleTimeZoneMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "ordinaut.urls"
WSGI_APPLICATION = "ordinaut.wsgi.application"
ASGI_APPLICATION = "ordinaut.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# -- database -------------------------------------------------------------------------------
# No SQLite anywhere: the queue relies on SKIP LOCKED, LISTEN/NOTIFY and partial indexes.
DATABASE_URL = env.str("DATABASE_URL", default="")
EMBEDDED_POSTGRES = False
if not DATABASE_URL:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DATABASE_URL is required when DEBUG is off, e.g. "
            "postgresql://user:password@host:5432/ordinaut or "
            "postgresql://user:@/ordinaut?host=/var/run/postgresql"
        )
    from ordinaut.embedded import dev_postgres

    EMBEDDED_POSTGRES = True
    DATABASE_URL = dev_postgres(VAR_DIR).socket_url("ordinaut")

DATABASES = {"default": database_settings(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# -- redis and cache ------------------------------------------------------------------------
# Redis carries throttles and the live event stream, never the critical path of scheduling
# or running work: without it the app is degraded, not down.
REDIS_URL = env.str("REDIS_URL", default="")
EMBEDDED_REDIS = False
if not REDIS_URL and DEBUG:
    from ordinaut.embedded import dev_redis

    EMBEDDED_REDIS = True
    REDIS_URL = dev_redis(VAR_DIR).url()

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 1,
                # A cache outage must not turn into 500s.
                "IGNORE_EXCEPTIONS": True,
            },
            "KEY_PREFIX": "ordinaut",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
DJANGO_REDIS_IGNORE_EXCEPTIONS = True
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

# -- auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# -- time -----------------------------------------------------------------------------------
# Instants are stored in UTC; TZ is the default zone for tasks and for the admin's display.
TIME_ZONE = env.str("TZ", default="Europe/Chisinau")
USE_TZ = True
# The zone every time in the operator console is shown in (with its name beside it).
CONSOLE_TIME_ZONE = env.str("CONSOLE_TIME_ZONE", default="UTC")
FORMAT_MODULE_PATH = ["ordinaut.formats"]
LANGUAGE_CODE = "en-us"
USE_I18N = True

# -- static files ---------------------------------------------------------------------------
STATIC_URL = "static/"
# Only needed for `collectstatic` (e.g. to serve from a CDN); WhiteNoise serves without it.
STATIC_ROOT = env.str("STATIC_ROOT", default="") or None
# Serve app static files (the admin's) straight from the packages: no collectstatic step.
WHITENOISE_USE_FINDERS = True

# -- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "EXCEPTION_HANDLER": "ordinaut.errors.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["ordinaut.api.JSONBodyParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "ordinaut.api.JSONFirstNegotiation",
    "DEFAULT_AUTHENTICATION_CLASSES": ["agents.authentication.AgentAuthentication"],
    # Deny by default: every view names its own permission classes and scope.
    "DEFAULT_PERMISSION_CLASSES": ["agents.permissions.HasScope"],
    # Counts only views that name a throttle_scope; views may still declare their own.
    "DEFAULT_THROTTLE_CLASSES": ["agents.throttles.AgentRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "agents.openapi.ScopedAutoSchema",
    "UNAUTHENTICATED_USER": None,
    # Per-agent rates in DRF's syntax ("60/min"); read by agents.throttles.
    "DEFAULT_THROTTLE_RATES": {
        "tasks": env.str("RATE_LIMIT_TASKS", default="60/min"),
        "events": env.str("RATE_LIMIT_EVENTS", default="120/min"),
        "reads": env.str("RATE_LIMIT_READS", default="1200/min"),
        "auth": env.str("RATE_LIMIT_AUTH", default="30/min"),
        # Refused token exchanges per claimed agent id (correct secrets are not counted).
        "auth_failures": env.str("RATE_LIMIT_AUTH_FAILURES", default="10/min"),
    },
}
# Bodies above this are refused with 413 before they are parsed (a task with a large pipeline
# is a few KiB; 1 MiB leaves room and bounds memory per request).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=1024 * 1024)

# JWTs for agents (names of the original's variables). Access tokens are short-lived; refresh
# tokens rotate, and revoked ids are kept in agents.RevokedToken.
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(
        minutes=env.int("JWT_ACCESS_TOKEN_EXPIRE_MINUTES", default=15)
    ),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_TOKEN_EXPIRE_DAYS", default=30)),
    "ALGORITHM": "HS256",
    "SIGNING_KEY": _signing_key("JWT_SECRET_KEY", _derive("ordinaut.jwt.signing.v1")),
    "USER_ID_CLAIM": "sub",
    "ISSUER": "ordinaut",
    "LEEWAY": 5,
    "UPDATE_LAST_LOGIN": False,
}
# Seconds a web process may reuse a credential lookup. Any change to agents, credentials or
# revoked tokens drops the cache of every process when it commits (PostgreSQL NOTIFY), so
# this only bounds the age of an entry; 0 looks every request up in the database.
AUTH_CACHE_SECONDS = env.float("AUTH_CACHE_SECONDS", default=30.0)
# Key of the HMAC that stores API keys. Derived from SECRET_KEY unless set, so a deployment
# needs no extra secret; set it explicitly to rotate SECRET_KEY without invalidating keys.
API_KEY_HMAC_SECRET = _signing_key(
    "API_KEY_HMAC_SECRET",
    # The derivation API keys have been stored under since the first release (kept as is:
    # a new one would invalidate every key).
    hashlib.sha256(f"ordinaut-api-key-hmac:{SECRET_KEY}".encode()).hexdigest(),
)

SPECTACULAR_SETTINGS = {
    "TITLE": "Ordinaut API",
    "DESCRIPTION": (
        "Task orchestrator for AI agents. Authenticate with `Authorization: Bearer <token>`, "
        "where the token is a JWT from `POST /agents/auth/token` or an API key (`ord_k_...`). "
        "Each operation lists the scope it requires; `admin` grants all."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    # /docs and /redoc load Swagger UI and ReDoc from this installation (the sidecar
    # package, served by whitenoise), not from a CDN: they work on a network without internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "PREPROCESSING_HOOKS": ["agents.openapi.drop_trailing_slash_duplicates"],
    "ENUM_NAME_OVERRIDES": {
        # Several enums share the field name "status"; name each after its model's choices
        # (import paths, so a status added to the model is covered without an edit here).
        "TaskStatusEnum": "tasks.models.TaskStatus.choices",
        "RunStatusEnum": "tasks.models.RunStatus.choices",
        "ApprovalStatusEnum": "tasks.models.ApprovalStatus.choices",
        "AgentStatusEnum": "agents.models.AgentStatus.choices",
    },
}

# -- per-agent budgets: what a new agent gets (unset: unlimited); operators change them per
# agent in the admin or with PATCH /agents/{id} {"budgets": {...}}.
AGENT_DEFAULT_MAX_ACTIVE_TASKS = env.int("AGENT_DEFAULT_MAX_ACTIVE_TASKS", default=None)
AGENT_DEFAULT_MAX_RUNS_PER_HOUR = env.int("AGENT_DEFAULT_MAX_RUNS_PER_HOUR", default=None)
AGENT_DEFAULT_MAX_CONCURRENT_RUNS = env.int("AGENT_DEFAULT_MAX_CONCURRENT_RUNS", default=None)
AGENT_DEFAULT_MAX_LLM_TOKENS_PER_DAY = env.int("AGENT_DEFAULT_MAX_LLM_TOKENS_PER_DAY", default=None)

# -- queue and scheduler (names kept from the original project) ------------------------------
SCHEDULER_MISFIRE_GRACE_TIME = env.int("SCHEDULER_MISFIRE_GRACE_TIME", default=30)
WORKER_LEASE_SECONDS = env.int("WORKER_LEASE_SECONDS", default=60)
WORKER_POLL_INTERVAL = env.float("WORKER_POLL_INTERVAL", default=0.5)
WORKER_MAX_RETRIES = env.int("WORKER_MAX_RETRIES", default=3)
WORKER_BACKOFF_MAX_DELAY = env.int("WORKER_BACKOFF_MAX_DELAY", default=60)
# The scheduler enqueues occurrences up to this many seconds before they are due, so a burst
# of tasks due at the same instant is already in the queue when that instant comes.
SCHEDULER_LOOKAHEAD_SECONDS = env.float("SCHEDULER_LOOKAHEAD_SECONDS", default=60.0)
# Longest sleep between ticks; NOTIFY from task changes wakes it sooner.
SCHEDULER_POLL_INTERVAL = env.float("SCHEDULER_POLL_INTERVAL", default=1.0)
SCHEDULER_BATCH_SIZE = env.int("SCHEDULER_BATCH_SIZE", default=1000)
# Misfire policy catch_up enqueues at most this many missed occurrences per task.
SCHEDULER_CATCHUP_MAX = env.int("SCHEDULER_CATCHUP_MAX", default=100)
# A scheduler heartbeat older than this makes /health report the scheduler as stale.
SCHEDULER_HEARTBEAT_STALE_SECONDS = env.int("SCHEDULER_HEARTBEAT_STALE_SECONDS", default=60)

# -- pipelines and tools ----------------------------------------------------------------------
# http.request refuses loopback, private and link-local targets (SSRF) except these hosts.
HTTP_TOOL_ALLOWED_HOSTS = env.list("HTTP_TOOL_ALLOWED_HOSTS", default=[])
# The most of a response body http.request keeps (a step may ask for less with max_bytes).
HTTP_TOOL_MAX_RESPONSE_BYTES = env.int("HTTP_TOOL_MAX_RESPONSE_BYTES", default=5 * 1024 * 1024)
# llm.chat / llm.plan: any OpenAI-compatible endpoint; the base URL includes /v1.
LLM_BASE_URL = env.str("LLM_BASE_URL", default="")
LLM_API_KEY = env.str("LLM_API_KEY", default="")
LLM_MODEL = env.str("LLM_MODEL", default="gpt-4o-mini")
# ${secrets.NAME} resolves from here, else from the variable ORDINAUT_SECRET_<NAME>; values
# are never stored in runs and are redacted from logs and outputs. Each must be at least 8
# characters (start-up refuses shorter ones); using one needs the scope secrets:<name>.
PIPELINE_SECRETS: dict[str, str] = {}

# -- events, outbox, approvals -----------------------------------------------------------------
EVENT_MAX_PAYLOAD_BYTES = env.int("EVENT_MAX_PAYLOAD_BYTES", default=256 * 1024)
OUTBOX_STREAM = env.str("OUTBOX_STREAM", default="ordinaut:events:out")
OUTBOX_STREAM_MAXLEN = env.int("OUTBOX_STREAM_MAXLEN", default=100_000)
OUTBOX_RELAY_BATCH = env.int("OUTBOX_RELAY_BATCH", default=1000)
# History kept, in days (0: forever), pruned by runscheduler in batches (tasks/retention.py).
# The audit log is never pruned.
RUN_RETENTION_DAYS = env.float("RUN_RETENTION_DAYS", default=90)
LEDGER_RETENTION_DAYS = env.float("LEDGER_RETENTION_DAYS", default=90)
EVENT_RETENTION_DAYS = env.float("EVENT_RETENTION_DAYS", default=30)
WEBHOOK_RETENTION_DAYS = env.float("WEBHOOK_RETENTION_DAYS", default=30)
# Published outbox rows are deleted after this long (the scheduler prunes them in batches).
OUTBOX_RETENTION_SECONDS = env.int("OUTBOX_RETENTION_SECONDS", default=7 * 86400)
APPROVAL_DEFAULT_EXPIRES_SECONDS = env.int("APPROVAL_DEFAULT_EXPIRES_SECONDS", default=86400)
APPROVALS_ALLOW_SELF_DECISION = env.bool("APPROVALS_ALLOW_SELF_DECISION", default=False)
# The fallback key for agents without their own (opt-in, for receivers not yet moved to
# per-agent keys). Empty: tasks/delivery/webhooks.py derives it from SECRET_KEY.
WEBHOOK_SIGNING_SECRET = _signing_key("WEBHOOK_SIGNING_SECRET", "")
WEBHOOK_RETRY_WINDOW_SECONDS = env.int("WEBHOOK_RETRY_WINDOW_SECONDS", default=86400)
WEBHOOK_RETRY_BASE_SECONDS = env.float("WEBHOOK_RETRY_BASE_SECONDS", default=10.0)
WEBHOOK_RETRY_MAX_DELAY_SECONDS = env.float("WEBHOOK_RETRY_MAX_DELAY_SECONDS", default=3600.0)
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=5.0)
WEBHOOK_CONCURRENCY = env.int("WEBHOOK_CONCURRENCY", default=8)
WEBHOOK_SEND_BUDGET_SECONDS = env.float("WEBHOOK_SEND_BUDGET_SECONDS", default=2.0)
# Run outcomes turned into deliveries per scheduler tick.
WEBHOOK_FANOUT_BATCH = env.int("WEBHOOK_FANOUT_BATCH", default=500)
INBOUND_EVENT_STREAM = env.str("INBOUND_EVENT_STREAM", default="ordinaut:events:in")
INBOUND_EVENT_GROUP = env.str("INBOUND_EVENT_GROUP", default="ordinaut")
INBOUND_EVENT_CLAIM_IDLE_SECONDS = env.int("INBOUND_EVENT_CLAIM_IDLE_SECONDS", default=60)

# -- logging --------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "correlation": {"()": "ordinaut.logging.CorrelationIdFilter"},
        # Pipeline secrets never reach a log line (named by path: settings import no app).
        "secrets": {"()": "pipelines.secrets.RedactSecretsFilter"},
    },
    "formatters": {"json": {"()": "ordinaut.logging.JsonFormatter"}},
    "handlers": {
        # Servers log to stdout. Commands that print results switch to stderr (see
        # ordinaut.logging.log_to_stderr) so their stdout stays machine-readable.
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json",
            "filters": ["correlation", "secrets"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"level": LOG_LEVEL},
        "django.db.backends": {"level": "INFO"},
    },
}
