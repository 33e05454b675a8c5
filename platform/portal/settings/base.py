"""Settings shared by every environment; values come from the environment (see .env.example)."""

from pathlib import Path

import environ

env = environ.Env()

REPO_DIR = Path(__file__).resolve().parents[3]
VAR_DIR = Path(env.str("COHORT_VAR_DIR", default=str(REPO_DIR / "var")))

DEBUG = False
ALLOWED_HOSTS: list[str] = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "core",
    "institutions",
    "studies",
    "runs",
    "consent",
    "privacy",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [REPO_DIR / "platform" / "portal" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "core.context_processors.navigation",
            ]
        },
    }
]

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# `portal` is the project package, not an installed app: its static folder is listed explicitly.
STATICFILES_DIRS = [REPO_DIR / "platform" / "portal" / "static"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Uploads: released models are small (catalog models); anything bigger is refused with a 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("COHORT_MAX_UPLOAD_BYTES", default=5 * 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "institutions.authentication.NodeTokenAuthentication",
        "runs.authentication.RunTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Cohort API",
    "DESCRIPTION": "Studies, hospital nodes and runs of Cohort's federated DP + HE platform.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and ReDoc from the installed sidecar package, not a CDN: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Three models have a `state`: name each enum after its model, not by a hash.
    "ENUM_NAME_OVERRIDES": {
        "StudyStateEnum": "studies.models.Study.State",
        "EnrollmentStateEnum": "studies.models.Enrollment.State",
        "RunStateEnum": "runs.models.Run.State",
        "ConsentStatusEnum": "consent.models.ConsentRecord.Status",
    },
}

# Celery: runs live in the database, not in task memory; a task killed with its worker is
# redelivered (acks_late + reject_on_worker_lost) and resumes from the database.
CELERY_BROKER_URL = env.str("COHORT_REDIS_URL", default="redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("COHORT_RUN_TIME_LIMIT_S", default=6 * 3600)
# Redis redelivers a task that was never acknowledged (its worker was killed) after this long.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int(
        "COHORT_CELERY_VISIBILITY_TIMEOUT_S", default=CELERY_TASK_TIME_LIMIT + 600
    )
}

# Flower: where runs are submitted and how the ServerApp reaches the portal back.
COHORT_SUPERLINK_ADDRESS = env.str("COHORT_SUPERLINK_ADDRESS", default="127.0.0.1:9093")
COHORT_SUPERLINK_INSECURE = env.bool("COHORT_SUPERLINK_INSECURE", default=True)
COHORT_FLWR_HOME = Path(env.str("COHORT_FLWR_HOME", default=str(VAR_DIR / "flwr-home")))
COHORT_PORTAL_URL = env.str("COHORT_PORTAL_URL", default="http://127.0.0.1:8000")
