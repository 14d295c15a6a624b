"""Diploi settings. Configuration comes from environment variables only; .env.example lists them."""

import os
import re
import secrets
import urllib.parse
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from diploi.env import envbool, envchoice, envint, envlist, envstr, low_ports_allowed

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = Path(envstr("DIPLOI_DATA_DIR", str(BASE_DIR / "data"))).resolve()
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)  # keys, database, deployments: the platform's alone


def _secret_key() -> str:
    """An explicit key wins; otherwise one is generated once and kept in the data directory."""
    key = envstr("DIPLOI_SECRET_KEY")
    if key:
        return key
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = envbool("DIPLOI_DEBUG", False)
ALLOWED_HOSTS = envlist("DIPLOI_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", ".localhost"])
CSRF_TRUSTED_ORIGINS = envlist("DIPLOI_CSRF_TRUSTED_ORIGINS", [])
SITE_URL = envstr("DIPLOI_SITE_URL", "http://localhost:8000")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "template_partials",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "accounts",
    "projects",
    "deployments",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "diploi.http.utf8_bodies",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "accounts.sessions.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "deployments.web.middleware.queue_notice",
    "diploi.http.Unavailable",
]

ROOT_URLCONF = "diploi.urls"
ASGI_APPLICATION = "diploi.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            # The dashboard's filters live with the web package, not at an app's top level.
            "libraries": {"diploi": "deployments.web.templatetags.diploi"},
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "deployments.tenancy.single_user_banner",
                "deployments.web.health.platform_events",
            ],
        },
    },
]

DATABASES = {"default": dj_database_url.parse(envstr("DATABASE_URL", f"sqlite:///{DATA_DIR / 'diploi.sqlite3'}"), conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server, the worker and the monitor share one SQLite file: WAL lets readers run
    # beside a writer, and IMMEDIATE transactions wait for the write lock instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not memory, so that a worker process started by a test sees the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-{os.getpid()}.sqlite3")}
elif DIPLOI_DB_POOL := envint("DIPLOI_DB_POOL", 0, minimum=0):
    # The web processes borrow connections from a pool (`up` and the Helm chart set DIPLOI_DB_POOL for
    # them): a request runs in a thread of its own, so without a pool every page view opened a new
    # PostgreSQL backend, which cost more than the page's own queries once they were few.
    DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 1, "max_size": DIPLOI_DB_POOL, "timeout": 10}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "projects:list"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"
# Sign-up is open only when deployments are confined (or the operator says so): deployments/tenancy.py.
ACCOUNT_ADAPTER = "deployments.tenancy.AccountAdapter"
DIPLOI_ALLOW_UNCONFINED = envbool("DIPLOI_ALLOW_UNCONFINED", False)
# The local runtime sandboxes deployments (bubblewrap) whenever the machine can; "off" only to compare.
DIPLOI_CONFINE = envchoice("DIPLOI_CONFINE", "auto", ("auto", "off"))
# Confined deployments connect over TCP only to their own services and to these ports of the world.
DIPLOI_OUTBOUND_PORTS = [int(p) for p in envlist("DIPLOI_OUTBOUND_PORTS", ["22", "53", "80", "443", "9418"])]
# What one deployment may use on the local runtime (all its services, builds and sessions together;
# enforced with a cgroup per deployment when Diploi runs as root).
DIPLOI_LOCAL_MEMORY_MIB = envint("DIPLOI_LOCAL_MEMORY_MIB", 2048, minimum=64)
DIPLOI_LOCAL_CPU_PERCENT = envint("DIPLOI_LOCAL_CPU_PERCENT", 100, minimum=10)
DIPLOI_LOCAL_PROCESSES = envint("DIPLOI_LOCAL_PROCESSES", 512, minimum=16)
# Disk per deployment (code, releases, storage): no file may be larger, and the dashboard turns red past it.
DIPLOI_LOCAL_DISK_MIB = envint("DIPLOI_LOCAL_DISK_MIB", 10240, minimum=64)
# The host ports the local runtime gives deployments' services: below the kernel's ephemeral range
# (32768–60999 on Linux), so that no outgoing connection of the machine takes one while its service is down.
# A folder of image archives (`podman save`) every deployment's container storage starts with: base
# images for a machine that reaches no registry ("" : none).
DIPLOI_CONTAINER_IMAGES = os.environ.get("DIPLOI_CONTAINER_IMAGES", "")
# Registries (host:port) podman reaches over plain HTTP: an operator's internal registry without TLS.
DIPLOI_CONTAINER_INSECURE_REGISTRIES = envlist("DIPLOI_CONTAINER_INSECURE_REGISTRIES", [])
if bad := [h for h in DIPLOI_CONTAINER_INSECURE_REGISTRIES if not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", h)]:
    raise ImproperlyConfigured(f"DIPLOI_CONTAINER_INSECURE_REGISTRIES: {bad[0]!r} is not a host[:port]")
DIPLOI_LOCAL_PORT_FIRST = envint("DIPLOI_LOCAL_PORT_FIRST", 20000, minimum=1024, maximum=65535)
DIPLOI_LOCAL_PORT_LAST = envint("DIPLOI_LOCAL_PORT_LAST", 29999, minimum=1024, maximum=65535)
# Seconds one build step (install, build) may take before it fails.
DIPLOI_BUILD_STEP_TIMEOUT = envint("DIPLOI_BUILD_STEP_TIMEOUT", 1800, minimum=1)
# Asked by the project pages (which do not import deployments) before a member is added.
DIPLOI_MEMBERS_REFUSED = "deployments.tenancy.refuse_new_members"
ACCOUNT_LOGIN_METHODS = {"username", "email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "username*", "password1*", "password2*"]
ACCOUNT_LOGOUT_ON_GET = False
ACCOUNT_PREVENT_ENUMERATION = True

GITHUB_CLIENT_ID = envstr("DIPLOI_GITHUB_CLIENT_ID")
GITHUB_SECRET = envstr("DIPLOI_GITHUB_SECRET")
SOCIALACCOUNT_PROVIDERS = {}
if GITHUB_CLIENT_ID and GITHUB_SECRET:  # otherwise there is no GitHub route at all (not a 500)
    INSTALLED_APPS.append("allauth.socialaccount.providers.github")
    SOCIALACCOUNT_PROVIDERS["github"] = {
        "APPS": [{"client_id": GITHUB_CLIENT_ID, "secret": GITHUB_SECRET, "key": ""}],
        "SCOPE": ["read:user", "user:email"],
    }

EMAIL_HOST = envstr("DIPLOI_EMAIL_HOST")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = envint("DIPLOI_EMAIL_PORT", 587, minimum=1, maximum=65535)
    EMAIL_HOST_USER = envstr("DIPLOI_EMAIL_USER")
    EMAIL_HOST_PASSWORD = envstr("DIPLOI_EMAIL_PASSWORD")
    EMAIL_USE_TLS = envbool("DIPLOI_EMAIL_TLS", True)
else:
    # Without a mail server, password-reset and verification mails are printed by the web process.
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = envstr("DIPLOI_EMAIL_FROM", "diploi@localhost")
# Confirmation mails only where mail goes out: without a mail server, sign-up would say one was sent.
ACCOUNT_EMAIL_VERIFICATION = envchoice("DIPLOI_EMAIL_VERIFICATION", "optional" if EMAIL_HOST else "none", ("none", "optional", "mandatory"))

# Redis carries Celery's queue and the Channels layer. `manage.py up` starts an embedded server and
# sets REDIS_URL for its children when it is not set; processes started by hand need it set.
REDIS_URL = envstr("REDIS_URL")


def redis_channel_layer(url: str) -> dict:
    # Pub/sub: a group event is one PUBLISH, and each web process, subscribed once per group it has
    # sockets in, hands it to them itself (the list-based layer queued one message per socket in
    # Redis: 500 sockets on one deployment took half a second per event). Live events are not kept
    # for a process that is away; a socket that reconnects starts from the current state anyway.
    # Pub/sub channels belong to the whole server, not to one of its databases: the prefix keeps two
    # installations (or test runs) on different databases of one Redis from hearing each other.
    host = {"address": url, "socket_timeout": 30, "socket_connect_timeout": 5}
    database = urllib.parse.urlsplit(url).path.strip("/") or "0"
    config = {"hosts": [host], "prefix": f"diploi.db{database}"}
    return {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": config}}


if REDIS_URL:
    CHANNEL_LAYERS = redis_channel_layer(REDIS_URL)
    # Rendered fragments, pages, sessions and signed-in users are shared by every web process, the monitor
    # and the workers (see diploi/shared.py); a Redis that is away makes them read again, never fail. The
    # default cache (allauth's rate limits, …) stays in each process: it must answer with Redis away.
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "shared": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "diploi",
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        },
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "shared": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "shared"},
    }
CELERY_BROKER_URL = REDIS_URL or "memory://"
# A task is acknowledged when it is done (acks_late), and one whose worker died goes back to the queue
# (reject_on_worker_lost): the tasks are idempotent, so running one twice is safe, losing one is not.
# Redis hands an unacknowledged task out again after the visibility timeout: longer than the longest
# task (a build of several steps), so a task that is still running is not started a second time. The
# monitor's reconciler re-drives what a killed worker left well before that (DIPLOI_RECONCILE_AFTER).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A Redis that is away answers a publish within seconds (the change then waits, see actions._enqueue).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600 + 3 * DIPLOI_BUILD_STEP_TIMEOUT, "socket_connect_timeout": 3}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

DIPLOI_RUNTIME = envchoice("DIPLOI_RUNTIME", "local", ("local", "kubernetes"))
DIPLOI_BASE_DOMAIN = envstr("DIPLOI_BASE_DOMAIN", "localhost")
# The local runtime's router (Caddy, started by `up`): every deployment's host names over HTTPS. "off"
# leaves deployments on their loopback ports (for work on Diploi itself).
DIPLOI_ROUTER = envchoice("DIPLOI_ROUTER", "caddy", ("caddy", "off"))
DIPLOI_HTTPS_PORT = envint("DIPLOI_HTTPS_PORT", 443 if low_ports_allowed() else 8443, minimum=1, maximum=65535)
DIPLOI_HTTP_PORT = envint("DIPLOI_HTTP_PORT", 80 if low_ports_allowed() else 8080, minimum=1, maximum=65535)
# Where certificates come from: auto is the router's own CA for a private base domain (localhost,
# .internal, …) and ACME for a public one; custom domains always use ACME.
DIPLOI_TLS = envchoice("DIPLOI_TLS", "auto", ("auto", "internal", "acme"))
DIPLOI_ACME_CA = envstr("DIPLOI_ACME_CA", "https://acme-v02.api.letsencrypt.org/directory")
DIPLOI_ACME_EMAIL = envstr("DIPLOI_ACME_EMAIL")
DIPLOI_ACME_CA_ROOT = envstr("DIPLOI_ACME_CA_ROOT")  # PEM file: the ACME server's own TLS root, when not a public one
# The dashboard's address behind the router (`up` sets it to its web port).
DIPLOI_DASHBOARD_UPSTREAM = envstr("DIPLOI_DASHBOARD_UPSTREAM")
# Seconds a replaced release keeps running after the router stopped sending it requests (its last ones finish).
DIPLOI_RELEASE_DRAIN = envint("DIPLOI_RELEASE_DRAIN", 5, minimum=0)
# The Kubernetes runtime (DIPLOI_RUNTIME=kubernetes): in-cluster configuration when no kubeconfig is given.
DIPLOI_K8S_KUBECONFIG = envstr("DIPLOI_K8S_KUBECONFIG")
DIPLOI_K8S_CONTEXT = envstr("DIPLOI_K8S_CONTEXT")
DIPLOI_K8S_INGRESS_CLASS = envstr("DIPLOI_K8S_INGRESS_CLASS", "nginx")
DIPLOI_K8S_CLUSTER_ISSUER = envstr("DIPLOI_K8S_CLUSTER_ISSUER", "letsencrypt")
DIPLOI_K8S_STORAGE_CLASS = envstr("DIPLOI_K8S_STORAGE_CLASS")
DIPLOI_K8S_REGISTRY = envstr("DIPLOI_K8S_REGISTRY", "registry.localhost:5000")
DIPLOI_K8S_GIT_IMAGE = envstr("DIPLOI_K8S_GIT_IMAGE", "alpine/git:2.47.2")
DIPLOI_K8S_DEFAULT_IMAGE = envstr("DIPLOI_K8S_DEFAULT_IMAGE", "debian:bookworm-slim")
DIPLOI_K8S_SIZE = envchoice("DIPLOI_K8S_SIZE", "S", ("S", "M", "L", "XL"))
# Helm, which renders the Kubernetes objects of packages that bring a chart (.diploi/helm/)
DIPLOI_HELM = envstr("DIPLOI_HELM", "helm")
DIPLOI_K8S_CODE_SIZE = envstr("DIPLOI_K8S_CODE_SIZE", "1Gi")
DIPLOI_K8S_DELETE_TIMEOUT = envint("DIPLOI_K8S_DELETE_TIMEOUT", 300, minimum=1)
# Client-side limits per process: requests a second (bursts of DIPLOI_K8S_BURST), writes at once. The API
# server's priority and fairness sheds what is still too much (429): asked again after its Retry-After.
DIPLOI_K8S_QPS = envint("DIPLOI_K8S_QPS", 200, minimum=1)
DIPLOI_K8S_BURST = envint("DIPLOI_K8S_BURST", 400, minimum=1)
DIPLOI_K8S_CONCURRENCY = envint("DIPLOI_K8S_CONCURRENCY", 16, minimum=1)
DIPLOI_K8S_BUILDER_IMAGE = envstr("DIPLOI_K8S_BUILDER_IMAGE", "gcr.io/kaniko-project/executor:v1.23.2")
DIPLOI_K8S_BUILD_TIMEOUT = envint("DIPLOI_K8S_BUILD_TIMEOUT", 1800, minimum=10)
# "user:password" (or token) for DIPLOI_K8S_REGISTRY: pulling goes to every deployment namespace as an
# image pull secret, pushing only into build Jobs. Empty: anonymous.
DIPLOI_K8S_REGISTRY_PULL_AUTH = envstr("DIPLOI_K8S_REGISTRY_PULL_AUTH")
DIPLOI_K8S_REGISTRY_PUSH_AUTH = envstr("DIPLOI_K8S_REGISTRY_PUSH_AUTH")
# Where custom domains are checked (CNAME, TXT): the machine's resolver, or these ("address[:port]").
DIPLOI_DNS_SERVERS = envlist("DIPLOI_DNS_SERVERS", [])
# Each deployment namespace's NetworkPolicy: who may reach its public ports, where DNS is, and the
# addresses its pods may not reach (the cluster's own networks, the platform, cloud metadata).
DIPLOI_K8S_INGRESS_NAMESPACE = envstr("DIPLOI_K8S_INGRESS_NAMESPACE", "ingress-nginx")
DIPLOI_K8S_DNS_NAMESPACE = envstr("DIPLOI_K8S_DNS_NAMESPACE", "kube-system")
DIPLOI_K8S_BLOCKED_CIDRS = envlist(
    "DIPLOI_K8S_BLOCKED_CIDRS",
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8", "fc00::/7", "fe80::/10"],
)
# Addresses inside those that deployments may reach all the same (a registry or Git server in the cluster).
DIPLOI_K8S_ALLOWED_CIDRS = envlist("DIPLOI_K8S_ALLOWED_CIDRS", [])
# job: a builder Job per component pushes to DIPLOI_K8S_REGISTRY; external: CI builds and reports
# each component's image to POST /api/ci/builds/ with the project's CI token.
DIPLOI_K8S_BUILD_MODE = envchoice("DIPLOI_K8S_BUILD_MODE", "job", ("job", "external"))
# Projects may use repositories on this machine only from these folders (and the demo's own), and
# servers on loopback or private networks only when allowed: otherwise a project reads what it should not.
DIPLOI_LOCAL_REPOSITORIES = envlist("DIPLOI_LOCAL_REPOSITORIES", [])
DIPLOI_ALLOW_PRIVATE_REPOSITORIES = envbool("DIPLOI_ALLOW_PRIVATE_REPOSITORIES", False)
DIPLOI_GIT_TIMEOUT = envint("DIPLOI_GIT_TIMEOUT", 60, minimum=1)
DIPLOI_SSH_PORT = envint("DIPLOI_SSH_PORT", 2222, minimum=1, maximum=65535)
DIPLOI_SSH_BIND = envstr("DIPLOI_SSH_BIND", "127.0.0.1")
DIPLOI_SSH_MAX_SESSIONS_PER_USER = envint("DIPLOI_SSH_MAX_SESSIONS_PER_USER", 50, minimum=1)
DIPLOI_SSH_MAX_SESSIONS_PER_DEPLOYMENT = envint("DIPLOI_SSH_MAX_SESSIONS_PER_DEPLOYMENT", 100, minimum=1)
DIPLOI_SSH_IDLE_TIMEOUT = envint("DIPLOI_SSH_IDLE_TIMEOUT", 900, minimum=1)
DIPLOI_SSH_LOGIN_TIMEOUT = envint("DIPLOI_SSH_LOGIN_TIMEOUT", 30, minimum=1)
DIPLOI_SSH_AUTH_FAILURES_PER_MINUTE = envint("DIPLOI_SSH_AUTH_FAILURES_PER_MINUTE", 20, minimum=1)
DIPLOI_SHUTDOWN_GRACE = envint("DIPLOI_SHUTDOWN_GRACE", 10, minimum=0)
# Seconds before `up` starts again a platform process that supervisord gave up on (it kept failing to start)
DIPLOI_PLATFORM_RETRY = envint("DIPLOI_PLATFORM_RETRY", 60, minimum=1)
# Web processes `up` starts on the one port (supervisord holds the socket; each daphne serves from it).
DIPLOI_WEB_PROCESSES = envint("DIPLOI_WEB_PROCESSES", 1, minimum=1)
DIPLOI_MONITOR_INTERVAL = envint("DIPLOI_MONITOR_INTERVAL", 5, minimum=1)
# Seconds a deployment may stay pending, provisioning or deleting (building: plus three build steps)
# before the monitor's reconciler drives it again.
DIPLOI_RECONCILE_AFTER = envint("DIPLOI_RECONCILE_AFTER", 600, minimum=30)
# Seconds provisioning waits for the public components to answer their health checks before it calls
# the deployment running anyway (its status then says, in yellow, what does not answer).
DIPLOI_READY_TIMEOUT = envint("DIPLOI_READY_TIMEOUT", 60, minimum=1)
DIPLOI_ENCRYPTION_KEYS = envlist("DIPLOI_ENCRYPTION_KEYS", [])
DIPLOI_PUBLIC_HOST = envstr("DIPLOI_PUBLIC_HOST", "localhost")
DIPLOI_BUILD_LOG_LIMIT = envint("DIPLOI_BUILD_LOG_LIMIT", 256 * 1024, minimum=1024)
# Push to deploy: seconds between two looks at each followed repository's branch tips (a repository
# whose webhook has been heard from is looked at ten times less often, as a safety net).
DIPLOI_POLL_INTERVAL = envint("DIPLOI_POLL_INTERVAL", 60, minimum=1)
# Releases whose artifacts are kept per deployment (what a rollback can go back to).
DIPLOI_RELEASES_KEPT = envint("DIPLOI_RELEASES_KEPT", 10, minimum=1)

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("DIPLOI_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns when it is missing
STATICFILES_DIRS = [BASE_DIR / "static"]
# Served straight from the apps' and project's static folders, so no collectstatic step is needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

SESSION_ENGINE = "accounts.sessions"  # database sessions read through the shared cache
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = envbool("DIPLOI_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# Behind a proxy that ends TLS (the router `up` starts, an Ingress), its X-Forwarded-Proto says the request
# came over HTTPS (for CSRF's origin check and absolute URLs). Not from a client that reaches the web directly.
if envbool("DIPLOI_BEHIND_PROXY", bool(envstr("DIPLOI_DASHBOARD_UPSTREAM"))):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("DIPLOI_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
