"""Breakwater settings: read from the environment only (docs/INTERFACES.md §2).

Zero configuration gives the embedded mode: SQLite under ``var/``, in-process state, an in-memory
channel layer and an in-process worker and scheduler. ``DATABASE_URL`` switches to PostgreSQL and
``REDIS_URL`` to Redis (channel layer, Celery broker and result backend, Django cache, hot state).
A ``.env`` file in the project root is read first if present; real environment variables win.
"""

from __future__ import annotations

import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

from core.env import env_bool, env_float, env_int, env_list, env_str, env_url

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env", override=False)

VAR_DIR = Path(env_str("BREAKWATER_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """``SECRET_KEY`` or, on a laptop, one generated once and kept in ``var/`` (mode 0600)."""
    value = os.environ.get("SECRET_KEY", "").strip()
    if value:
        if len(value) < 32:
            raise ImproperlyConfigured("SECRET_KEY: must be at least 32 characters long")
        return value
    path = VAR_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# --- Mode ---------------------------------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", None, schemes=frozenset({"redis", "rediss", "unix"}))
EMBEDDED = REDIS_URL is None
CELERY_BROKER_URL = env_url(
    "CELERY_BROKER_URL",
    REDIS_URL or "memory://",
    schemes=frozenset({"redis", "rediss", "amqp", "amqps", "memory"}),
)

# --- Secrets at rest ---------------------------------------------------------------------
# Comma-separated Fernet keys: the first encrypts, all decrypt (rotation). Validated in
# agents.access.crypto at start-up so a malformed key names the variable.
BREAKWATER_ENCRYPTION_KEYS = env_list("BREAKWATER_ENCRYPTION_KEYS", [])

# --- Limits ------------------------------------------------------------------------------
BREAKWATER_MAX_BODY_BYTES = env_int("BREAKWATER_MAX_BODY_BYTES", 1 << 20, min_value=1024)
BREAKWATER_REQUIRE_SERVICES = env_bool("BREAKWATER_REQUIRE_SERVICES", False)
# Slow clients (`manage.py serve`, console/http_protocol.py): a request's headers must arrive
# within HEADER_TIMEOUT of its first byte (or of the connection opening), its whole body within
# BODY_TIMEOUT of the headers; past MAX_CONNECTIONS open connections per process, requests are
# answered 503.
BREAKWATER_HEADER_TIMEOUT_S = env_float(
    "BREAKWATER_HEADER_TIMEOUT_S", 10.0, min_value=0.1, max_value=600
)
BREAKWATER_BODY_TIMEOUT_S = env_float(
    "BREAKWATER_BODY_TIMEOUT_S", 10.0, min_value=0.1, max_value=3600
)
BREAKWATER_MAX_CONNECTIONS = env_int(
    "BREAKWATER_MAX_CONNECTIONS", 1000, min_value=1, max_value=1_000_000
)
BREAKWATER_STALE_EXECUTION_S = env_int(
    "BREAKWATER_STALE_EXECUTION_S", 3900, min_value=60
)  # > the longest agent deadline (3600 s)
# Finished executions created more than this many days ago are deleted
# (agents.executions.retention); the ledger and the rollups are kept. 1 to 36,500.
BREAKWATER_RETENTION_DAYS = env_int("BREAKWATER_RETENTION_DAYS", 30, min_value=1, max_value=36_500)
# Python callables agents may use as tools ("module:function"), and webhook hosts that may
# resolve to private addresses (everything else private/loopback/link-local is refused).
BREAKWATER_TOOL_ALLOW_LIST = env_list(
    "BREAKWATER_TOOL_ALLOW_LIST",
    ["agents.tools_builtin:current_time", "agents.tools_builtin:calculator"],
)
BREAKWATER_WEBHOOK_ALLOW_HOSTS = env_list("BREAKWATER_WEBHOOK_ALLOW_HOSTS", [])
# Provider base_url hosts allowed to be (or resolve to) a cloud metadata address: link-local
# 169.254.0.0/16 and fe80::/10, fd00:ec2::254. Loopback and private addresses need no entry.
BREAKWATER_PROVIDER_ALLOW_HOSTS = env_list("BREAKWATER_PROVIDER_ALLOW_HOSTS", [])
BREAKWATER_REDIS_MAX_CONNECTIONS = env_int(
    "BREAKWATER_REDIS_MAX_CONNECTIONS", 200, min_value=1, max_value=10_000
)
# Distributed mode: serve processes also drain the Redis journal into the database (zero
# set-up); set false where `manage.py drain_records` runs as its own deployment, to keep that
# work (about a third of a serving process's CPU per execution) off the serving processes.
BREAKWATER_SERVE_DRAINS = env_bool("BREAKWATER_SERVE_DRAINS", True)
BREAKWATER_READYZ_TIMEOUT_S = env_float(
    "BREAKWATER_READYZ_TIMEOUT_S", 2.0, min_value=0.05, max_value=30
)
# Process liveness (agents.executions.processes): a process running executions writes a heartbeat every
# HEARTBEAT_S; one silent for DEAD_AFTER_S is dead, and the executions it left running are
# settled (failed and charged their reservation, or re-queued) within about a minute.
BREAKWATER_HEARTBEAT_S = env_float("BREAKWATER_HEARTBEAT_S", 5.0, min_value=0.1, max_value=60)
BREAKWATER_DEAD_AFTER_S = env_float("BREAKWATER_DEAD_AFTER_S", 20.0, min_value=1.0, max_value=3600)
if BREAKWATER_DEAD_AFTER_S < 2 * BREAKWATER_HEARTBEAT_S:
    raise ImproperlyConfigured(
        "BREAKWATER_DEAD_AFTER_S must be at least twice BREAKWATER_HEARTBEAT_S "
        f"({BREAKWATER_DEAD_AFTER_S:g} < 2 x {BREAKWATER_HEARTBEAT_S:g})"
    )
# Deployment breakers (one per provider deployment, shared by every agent using it): consecutive
# failures that open one, and how long it stays open before a half-open probe.
BREAKWATER_DEPLOYMENT_BREAKER_FAILURES = env_int(
    "BREAKWATER_DEPLOYMENT_BREAKER_FAILURES", 5, min_value=1, max_value=1000
)
BREAKWATER_DEPLOYMENT_BREAKER_RECOVERY_S = env_float(
    "BREAKWATER_DEPLOYMENT_BREAKER_RECOVERY_S", 30.0, min_value=1.0, max_value=86400
)
# Shared state (Redis): a command unanswered after this many seconds fails its execution with a
# typed 503 (the connection is reset); connecting gets the same time.
BREAKWATER_REDIS_TIMEOUT_S = env_float(
    "BREAKWATER_REDIS_TIMEOUT_S", 0.25, min_value=0.01, max_value=30
)
# Cost spike: 5-minute spend above FACTOR x its 6-hour baseline and above MIN_USD.
BREAKWATER_COST_SPIKE_FACTOR = env_float("BREAKWATER_COST_SPIKE_FACTOR", 3.0, min_value=1.0)
BREAKWATER_COST_SPIKE_MIN_USD = env_float("BREAKWATER_COST_SPIKE_MIN_USD", 1.0, min_value=0.0)
# Drills (console/drills/): the deployment they run against. Unset: `manage.py drill` uses
# http://127.0.0.1:8000 and a drill started from /drills/ the address its page was served on.
BREAKWATER_DRILL_URL = env_url("BREAKWATER_DRILL_URL", None, schemes=frozenset({"http", "https"}))

# --- Notifications (incidents.notifications; docs/OPERATIONS.md, "Notifications") ---------
# The console's address as the on-call opens it: links in notifications point here.
BREAKWATER_CONSOLE_URL = env_url(
    "BREAKWATER_CONSOLE_URL", "http://127.0.0.1:8000", schemes=frozenset({"http", "https"})
)
# A key that opens again within FLAP_S of its incident's resolution reopens that incident
# (timeline "reopened") without a new notification; 0 = every opening is a new incident.
BREAKWATER_NOTIFY_FLAP_S = env_float(
    "BREAKWATER_NOTIFY_FLAP_S", 600.0, min_value=0, max_value=86_400
)
# Each message gets ATTEMPTS tries; attempt n+1 waits BACKOFF_S x 2^(n-1) (at most
# BACKOFF_MAX_S), +/- JITTER of it. Each HTTP or SMTP try gives up after TIMEOUT_S.
BREAKWATER_NOTIFY_ATTEMPTS = env_int("BREAKWATER_NOTIFY_ATTEMPTS", 5, min_value=1, max_value=20)
BREAKWATER_NOTIFY_BACKOFF_S = env_float(
    "BREAKWATER_NOTIFY_BACKOFF_S", 2.0, min_value=0.01, max_value=3600
)
BREAKWATER_NOTIFY_BACKOFF_MAX_S = env_float(
    "BREAKWATER_NOTIFY_BACKOFF_MAX_S", 300.0, min_value=0.01, max_value=86_400
)
BREAKWATER_NOTIFY_JITTER = env_float("BREAKWATER_NOTIFY_JITTER", 0.2, min_value=0, max_value=1)
BREAKWATER_NOTIFY_TIMEOUT_S = env_float(
    "BREAKWATER_NOTIFY_TIMEOUT_S", 10.0, min_value=0.1, max_value=120
)
# Email channels go through Django's email backend (SMTP unless told otherwise).
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, min_value=1, max_value=65_535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL: set one of them, not both")
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0, min_value=0.1, max_value=120)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "breakwater@localhost")
# Memory watch (core/memory.py, docs/OPERATIONS.md "Memory and recycling"): every process samples
# its RSS every SAMPLE_S; after WARMUP_S, a least-squares slope over WINDOW_S above
# GROWTH_MB_PER_HOUR (0: off), or an RSS over LIMIT_MB (0: none), opens a memory_growth incident.
BREAKWATER_MEMORY_SAMPLE_S = env_float(
    "BREAKWATER_MEMORY_SAMPLE_S", 5.0, min_value=0.05, max_value=600
)
BREAKWATER_MEMORY_WINDOW_S = env_float("BREAKWATER_MEMORY_WINDOW_S", 600.0, min_value=1.0)
BREAKWATER_MEMORY_WARMUP_S = env_float("BREAKWATER_MEMORY_WARMUP_S", 300.0, min_value=0.0)
BREAKWATER_MEMORY_GROWTH_MB_PER_HOUR = env_float(
    "BREAKWATER_MEMORY_GROWTH_MB_PER_HOUR", 50.0, min_value=0.0
)
BREAKWATER_MEMORY_LIMIT_MB = env_float("BREAKWATER_MEMORY_LIMIT_MB", 0.0, min_value=0.0)
if BREAKWATER_MEMORY_WINDOW_S < 4 * BREAKWATER_MEMORY_SAMPLE_S:
    raise ImproperlyConfigured(
        "BREAKWATER_MEMORY_WINDOW_S must hold at least 4 samples of BREAKWATER_MEMORY_SAMPLE_S "
        f"({BREAKWATER_MEMORY_WINDOW_S:g} < 4 x {BREAKWATER_MEMORY_SAMPLE_S:g})"
    )
# Drills only: every serving process leaks this many bytes per second from start-up.
BREAKWATER_MEMORY_LEAK_BYTES_PER_S = env_float(
    "BREAKWATER_MEMORY_LEAK_BYTES_PER_S", 0.0, min_value=0.0
)
# `serve` workers (console/supervisor.py): N processes on one socket; each is replaced after
# MAX_REQUESTS (+ up to JITTER, default a tenth) requests or past MAX_RSS_MB (0: never).
BREAKWATER_SERVE_WORKERS = env_int("BREAKWATER_SERVE_WORKERS", 1, min_value=1, max_value=64)
BREAKWATER_SERVE_MAX_REQUESTS = env_int("BREAKWATER_SERVE_MAX_REQUESTS", 0, min_value=0)
BREAKWATER_SERVE_MAX_REQUESTS_JITTER = env_int(
    "BREAKWATER_SERVE_MAX_REQUESTS_JITTER", BREAKWATER_SERVE_MAX_REQUESTS // 10, min_value=0
)
BREAKWATER_SERVE_MAX_RSS_MB = env_float("BREAKWATER_SERVE_MAX_RSS_MB", 0.0, min_value=0.0)

# --- Applications ------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "channels",
    "csp",
    "axes",
    # Not for models: with it installed, /api/v1/docs serves Swagger UI from our static files
    # with its init script in a file (ninja's CDN page has an inline script the CSP refuses).
    "ninja",
    "console",
    "agents",
    "budgets",
    "incidents",
]
# `manage.py runserver` is daphne's (its documented integration: first in INSTALLED_APPS, ahead
# of staticfiles, it replaces Django's runserver with one serving ASGI_APPLICATION, websockets
# included), whatever DEBUG says. Only in that process: importing daphne installs Twisted's
# reactor and costs about 14 MiB and 0.3 s at start-up, which `serve`, the Celery processes and
# every other command do not need. Django reads the subcommand from argv[1] too.
if sys.argv[1:2] == ["runserver"]:
    INSTALLED_APPS.insert(0, "daphne")

MIDDLEWARE = [
    # First: every answer carries X-Request-ID, and the audit names the request (the lean
    # doors do the same in agents/doors/shell.py).
    "core.request_id.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into the lockout page (429)
]

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "console.asgi.application"

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
                "console.roles.context",  # console_role, can_operate, can_admin
                "csp.context_processors.nonce",  # {{ CSP_NONCE }} for a script that needs one
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------------
DATABASE_URL = env_url(
    "DATABASE_URL",
    f"sqlite:///{VAR_DIR / 'breakwater.sqlite3'}",
    schemes=frozenset({"sqlite", "postgres", "postgresql", "pgsql"}),
)
assert DATABASE_URL is not None
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=0)
except ValueError as exc:  # pragma: no cover - env_url already checked the scheme
    raise ImproperlyConfigured(f"DATABASE_URL: {exc}") from None
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + a busy timeout let the server, the in-process worker and `manage.py` commands
    # share the file without "database is locked" errors.
    # Tests use a file too (not Django's shared-cache in-memory database, whose table locks
    # ignore the busy timeout and fail when a background thread writes): same WAL behaviour as
    # production. One file per test process (pytest-django also suffixes xdist workers).
    _db["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
    _db["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    _db["CONN_HEALTH_CHECKS"] = True
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache, channel layer, Celery -------------------------------------------------------
CACHES: dict[str, dict[str, object]]
CHANNEL_LAYERS: dict[str, dict[str, object]]
if EMBEDDED:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "bw:cache",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py's default 5 s socket timeout equals the layer's blocking read: an idle
            # socket would die after 5 s of silence.
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "prefix": "bw:asgi",
            },
        }
    }

# --- Django-side metrics (django-prometheus; docs/DECISIONS.md #16) ----------------------
# HTTP by view, database and cache metrics in the one /metrics. The lean execute doors skip
# Django's middleware, so they stay outside it (console/asgi.py).
BREAKWATER_DJANGO_METRICS = env_bool("BREAKWATER_DJANGO_METRICS", True)
if BREAKWATER_DJANGO_METRICS:
    MIDDLEWARE = [
        "console.django_metrics.PrometheusBeforeMiddleware",
        *MIDDLEWARE,
        "console.django_metrics.PrometheusAfterMiddleware",
    ]
    _db["ENGINE"] = {
        "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
        "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
    }.get(str(_db["ENGINE"]), str(_db["ENGINE"]))
    CACHES["default"]["BACKEND"] = (
        "console.django_metrics.LocMemCache" if EMBEDDED else "console.django_metrics.RedisCache"
    )

CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A killed worker's message is redelivered after this many seconds (kombu's default is an
# hour). Duplicates are harmless: a delivery that finds a fresh claim re-queues itself.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("BREAKWATER_CELERY_VISIBILITY_S", 300, min_value=30)
}
# Worker recycling (prefork pool): a worker process is replaced after MAX_TASKS tasks, or after
# the task that took its RSS past MAX_MEMORY_MB (0: never). Celery's setting is in KiB.
_worker_max_memory_mb = env_int("BREAKWATER_WORKER_MAX_MEMORY_MB", 0, min_value=0)
_worker_max_tasks = env_int("BREAKWATER_WORKER_MAX_TASKS", 0, min_value=0)
CELERY_WORKER_MAX_MEMORY_PER_CHILD = _worker_max_memory_mb * 1024 or None
CELERY_WORKER_MAX_TASKS_PER_CHILD = _worker_max_tasks or None
BREAKWATER_EXECUTION_QUEUE = env_str("BREAKWATER_EXECUTION_QUEUE", "celery")
BREAKWATER_EXECUTION_CLAIM_GRACE_S = env_float(
    "BREAKWATER_EXECUTION_CLAIM_GRACE_S", 60.0, min_value=1.0, max_value=3600.0
)

# --- Auth, i18n, static ------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

# Login throttling (django-axes), for every login form (the console's /login/ and the admin's):
# 5 failures for one username from one IP address lock that pair out for 15 minutes, counted
# from the failure that locked it (tries during the cool-off do not extend it). Other usernames
# from that address, and that username from elsewhere, are not affected. A success resets the
# count. Each lockout is audited (console/login_throttle.py). The client address is the
# connection's (behind BREAKWATER_BEHIND_PROXY, `serve` takes it from X-Forwarded-For).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out pair before any check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("BREAKWATER_LOGIN_FAILURE_LIMIT", 5, min_value=1, max_value=1000)
AXES_COOLOFF_TIME = timedelta(
    minutes=env_float("BREAKWATER_LOGIN_COOLOFF_MINUTES", 15.0, min_value=0.1, max_value=10080)
)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_TEMPLATE = "console/locked_out.html"
AXES_VERBOSE = False  # no start-up banner; its log lines name only the lockout parameters

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# Static files are few and small (the console's CSS/JS): console/asgi.py serves them from the
# finders at the ASGI layer, so no sync-only middleware sits in front of every request.
DATA_UPLOAD_MAX_MEMORY_SIZE = BREAKWATER_MAX_BODY_BYTES

# --- Security (production defaults; `manage.py check --deploy` is clean with HTTPS on) ------
BREAKWATER_HTTPS = env_bool("BREAKWATER_HTTPS", False)
SESSION_COOKIE_SECURE = BREAKWATER_HTTPS
CSRF_COOKIE_SECURE = BREAKWATER_HTTPS
SECURE_SSL_REDIRECT = BREAKWATER_HTTPS
SECURE_HSTS_SECONDS = env_int(
    "SECURE_HSTS_SECONDS", 31536000 if BREAKWATER_HTTPS else 0, min_value=0
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = BREAKWATER_HTTPS
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BREAKWATER_BEHIND_PROXY", False) else None
)
# Health probes and metrics are plain HTTP from inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads it to send X-CSRFToken
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content-Security-Policy (django-csp) on every Django response; the lean doors send the same
# (agents/doors/shell.security_headers). Scripts and styles come from our own static files only:
# no inline script or style, no eval. A script that must be inline carries
# nonce="{{ CSP_NONCE }}" (the nonce is made, and added to the header, only when used).
# data: images are Swagger UI's icons (/api/v1/docs).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
        "upgrade-insecure-requests": BREAKWATER_HTTPS,
    }
}

# --- Logging -----------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL: unknown level {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # API keys never reach the logs, whichever logger writes them (a referer, a path, a message).
    "filters": {"redact_keys": {"()": "core.log_redaction.RedactKeyParams"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_keys"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own handlers on "django" (a console one under DEBUG) would write its records
        # a second time, unfiltered: runserver's access log, with the query string, included.
        "django": {"handlers": [], "level": "INFO"},
        "django.db.backends": {"level": "INFO"},
    },
}
