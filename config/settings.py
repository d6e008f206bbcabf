"""Parley settings: everything from the environment, defaults that run on a laptop.

Production behaviour is switched on by variables (README "Configuration"):
``DATABASE_URL`` (PostgreSQL), ``REDIS_URL`` (channels-redis), ``LLM_BACKEND``...
"""

import os
from pathlib import Path

import environ

from core.redis_url import is_cluster_url, parse_cluster_url

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)
# A fixed development key: fine on a laptop, refused nowhere; production sets its own.
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="parley-insecure-development-key-change-me")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "chat.http.csrf_failure"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "accounts",
    "chat",
    "voice",
]

# Django's own middleware, as subclasses that run their hooks in the event loop where
# they do no I/O (config/middleware.py: thirteen thread hops a request otherwise).
MIDDLEWARE = [
    "config.middleware.SecurityMiddleware",
    "config.security.ContentSecurityPolicyMiddleware",
    "config.middleware.SessionMiddleware",
    "config.middleware.CommonMiddleware",
    "chat.http.ApiMethodNotAllowedMiddleware",
    "config.middleware.AuthenticationMiddleware",
    # After the session user, before CSRF: a valid bearer token replaces the session
    # user and exempts the request from CSRF (docs/protocol.md "Identity").
    "accounts.middleware.BearerTokenMiddleware",
    "config.middleware.CsrfViewMiddleware",
    "config.middleware.MessageMiddleware",
    "config.middleware.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

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

# An empty DATABASE_URL (a blank line in an env file) means unset, as REDIS_URL does.
DATABASES = {
    "default": env.db_url_config(
        env.str("DATABASE_URL", default="") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
    ),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several coroutines share one SQLite file: wait for the write lock instead of
    # failing with "database is locked"; WAL lets readers run beside the writer. In WAL
    # mode synchronous=NORMAL is SQLite's recommended setting: still corruption-proof, it
    # syncs at checkpoints instead of on every commit (a send is two commits before the
    # model sees the request); a power cut can lose the last commits, a crash cannot.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
        }
    )
    # Tests share their database with a real daphne process, so it must be a file; one per
    # test session, so two sessions on one machine do not trample each other.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / f"test-{os.getpid()}.sqlite3")}
# Persistent connections: one per worker thread, checked before reuse. Without it every
# database_sync_to_async call would open a new connection (on SQLite: open the file and
# switch to WAL, about a millisecond on the one database thread that handshakes share).
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# PostgreSQL: a connection pool per process (Django's own, on psycopg_pool). Under ASGI,
# Django runs each HTTP request's sync code on a thread of its own (a ThreadSensitiveContext
# per request), and a connection belongs to its thread: without a pool every HTTP request
# (a search, an SSE stream's opening, an OpenAI call) opened a new PostgreSQL connection,
# a backend process forked for it, and dropped it after (Django ticket #33497; pools came in
# Django 5.1 as the answer). With the pool a connection goes back to it when Django closes
# it (the end of a request, the end of each database_sync_to_async call), so a pool needs
# CONN_MAX_AGE 0. DATABASE_POOL=0 turns it off (an external pooler such as PgBouncer in
# transaction mode wants Django's plain connections).
DATABASE_POOL = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env.bool(
    "DATABASE_POOL", default=True
)
if DATABASE_POOL:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=20),
        # A request that finds every connection busy waits this long for one, then fails.
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=10.0),
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
# ``redis+cluster://host:port,host:port,...`` selects Redis Cluster mode: the store, leases,
# queues and presence use a cluster client, and the channel layer speaks sharded pub/sub
# (core/cluster_layer.py; docs/architecture.md "Redis Cluster"). Any one node is enough to
# find the others; list several so a start-up survives one being down.
REDIS_CLUSTER = parse_cluster_url(REDIS_URL) if is_cluster_url(REDIS_URL) else None
# How many messages a channel of the cluster layer holds for its reader before it drops the
# newest (a room channel reads each at once; a lost durable event is refilled from the log,
# as with the pub/sub layer). The in-memory layer's 5000 below, for the same bursts.
PARLEY_CLUSTER_LAYER_CAPACITY = env.int("PARLEY_CLUSTER_LAYER_CAPACITY", default=5000)
if REDIS_CLUSTER is not None:
    # Sharded pub/sub (SPUBLISH/SSUBSCRIBE): each room's messages travel on its own slot's
    # shard, and a process subscribes only to the rooms it has members in.
    # channels-redis cannot use a cluster (channels_redis#420).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "core.cluster_layer.ClusterChannelLayer",
            "CONFIG": {
                "nodes": REDIS_CLUSTER.nodes,
                "username": REDIS_CLUSTER.username,
                "password": REDIS_CLUSTER.password,
                "capacity": PARLEY_CLUSTER_LAYER_CAPACITY,
            },
        }
    }
elif REDIS_URL:
    # The pub/sub layer: one PUBLISH per event per room reaches every process, which fans
    # it out to its own members, instead of one list push per member (the core layer).
    # It delivers at most once: an event lost while Redis restarts is recovered from the
    # room's event log in Redis (see docs/architecture.md), never silently dropped.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    # Capacity per channel: the in-memory layer drops messages to a full channel, so leave
    # room for a burst (consumers also fill any gap from the replay log).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 5000},
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
# collectstatic's output, served by daphne (config/static.py); make run, the Dockerfile and
# the test session fill it.
STATIC_ROOT = env.path("DJANGO_STATIC_ROOT", default=BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed names for long caching; while DEBUG, the apps' files as they are (no
    # collectstatic needed to see an edit).
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "config.static.StaticStorage"
    },
}

# --- Security headers and cookies (README, "Production") --------------------------------

# The pages' policy (config/security.py): code only from this origin, no inline script or
# style, no eval, no framing, no plugins. connect-src 'self' covers the room WebSocket
# (same host, ws: or wss:) and the SSE/HTTP fallbacks; media and images may be blob:/data:
# URLs the page makes itself.
PARLEY_CSP = env.str(
    "PARLEY_CSP",
    default=(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
)
# Served over HTTPS (TLS ended by nginx, which sets X-Forwarded-Proto): cookies are sent
# only over TLS, and Django trusts the proxy's word that the request came in as https.
# Off by default so a laptop on plain http can log in. Only set it behind a proxy that
# overwrites X-Forwarded-Proto on every request (deploy/nginx does), or a client could
# claim https itself.
DJANGO_HTTPS = env.bool("DJANGO_HTTPS", default=False)
SESSION_COOKIE_SECURE = DJANGO_HTTPS
CSRF_COOKIE_SECURE = DJANGO_HTTPS
if DJANGO_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # httpx logs every upstream request at INFO: one line per reply, in the hot path of a
    # send. Its warnings and errors still show.
    "loggers": {"httpx": {"level": env.str("HTTPX_LOG_LEVEL", default="WARNING")}},
}

# --- Parley ----------------------------------------------------------------------------

# Message text limit (docs/protocol.md "WebSocket"): long enough for a pasted page of code,
# short enough that one message cannot fill a model's context.
PARLEY_MAX_MESSAGE_CHARS = env.int("PARLEY_MAX_MESSAGE_CHARS", default=8000)
# Largest JSON body the HTTP API reads; a message at the limit in UTF-8 is < 32 KiB.
PARLEY_MAX_BODY_BYTES = env.int("PARLEY_MAX_BODY_BYTES", default=64 * 1024)
# Page size of GET /api/rooms/<slug>/messages when the client gives no limit, and the most
# it may ask for: one screen of history, and a cap so one request cannot read a whole room.
PARLEY_MESSAGES_PAGE = env.int("PARLEY_MESSAGES_PAGE", default=50)
PARLEY_MESSAGES_PAGE_MAX = env.int("PARLEY_MESSAGES_PAGE_MAX", default=200)
# Search (GET /api/rooms/<slug>/search): hits per page, a list one can read at a glance
# and that one GIN lookup plus a sort of the matches answers well under 100 ms at 100,000
# messages (bench/search.py); and the longest query, a sentence: a longer one is no
# search a person types, and websearch_to_tsquery's work grows with it.
PARLEY_SEARCH_PAGE = env.int("PARLEY_SEARCH_PAGE", default=20)
PARLEY_SEARCH_MAX_CHARS = env.int("PARLEY_SEARCH_MAX_CHARS", default=200)
# Unread counts (GET /api/rooms) stop at this many: the page shows "99+" past 99, and a
# count of a room one never reads then reads at most this many index entries.
PARLEY_UNREAD_MAX = env.int("PARLEY_UNREAD_MAX", default=100)
# "Mentioned" looks at this many unread messages that contain "@<username>" (LIKE) for a
# whole-name mention (not "@ann" in "@anna"): one real mention among them is enough.
PARLEY_MENTION_CANDIDATES = env.int("PARLEY_MENTION_CANDIDATES", default=20)

# The model. Default: openai when an OpenAI-compatible server is configured, else the
# bundled model (README "Configuration").
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
LLM_BACKEND = env.str(
    "LLM_BACKEND", default="openai" if (OPENAI_BASE_URL or OPENAI_API_KEY) else "local"
)
LLM_MODEL = env.str(
    "LLM_MODEL", default="gpt-4o-mini" if LLM_BACKEND == "openai" else "gemma-3-270m"
)
# More model servers beside the default one (README "Assistants"): JSON,
# {"<name>": {"base_url": "https://.../v1", "api_key": "..."}}. Staff can add more in the
# admin. Each provider's model list (GET /v1/models) is kept this many seconds.
PARLEY_PROVIDERS = env.str("PARLEY_PROVIDERS", default="")
PARLEY_MODELS_TTL = env.float("PARLEY_MODELS_TTL", default=300.0)
# Assistants that mention each other answer each other, at most this many replies in all
# per human message (the first answer included), so no exchange can run away.
PARLEY_ASSISTANT_REPLIES_MAX = env.int("PARLEY_ASSISTANT_REPLIES_MAX", default=3)
# How long a room's invite link works unless its owner revokes it first.
PARLEY_INVITE_DAYS = env.float("PARLEY_INVITE_DAYS", default=7.0)
# A deleted message's text stays (admin only) this long so staff can review abuse reports
# about it, then `manage.py purge_deleted` erases it: a month covers a report that comes
# in after a weekend or a holiday without keeping what a member took back for longer.
PARLEY_DELETED_RETENTION_DAYS = env.float("PARLEY_DELETED_RETENTION_DAYS", default=30.0)
# A rating's optional comment: a sentence or two of why, not an essay (the admin lists it).
PARLEY_RATING_COMMENT_MAX = 500
# Connecting to the model server should take milliseconds; 10 s covers a cold TLS
# handshake across the world without leaving a user staring at nothing for long.
LLM_CONNECT_TIMEOUT = env.float("LLM_CONNECT_TIMEOUT", default=10.0)
# Longest silence between two chunks of a streamed reply. Large models can think for a
# while before the first token; past a minute with no byte the server is presumed stuck.
LLM_READ_TIMEOUT = env.float("LLM_READ_TIMEOUT", default=60.0)
# Cap on tokens one reply may produce, so a runaway model cannot stream forever.
LLM_MAX_TOKENS = env.int("LLM_MAX_TOKENS", default=512)
LLM_TEMPERATURE = env.float("LLM_TEMPERATURE", default=0.7)
# How much conversation goes into the prompt: the newest messages, up to this many
# characters (about a quarter as many tokens), so the bundled model's 32k context and
# any server's limit are respected without a tokenizer round-trip.
# The bundled model gets more (16,000 characters, 100 messages) and keeps what fits its
# own window (LLM_LOCAL_N_CTX, in tokens): a count of messages would slide the prompt's
# start at every turn, and with it the state the model could have kept (chat/llm/local.py).
LLM_CONTEXT_CHARS = env.int("LLM_CONTEXT_CHARS", default=6000 if LLM_BACKEND == "openai" else 16000)
LLM_CONTEXT_MESSAGES = env.int(
    "LLM_CONTEXT_MESSAGES", default=30 if LLM_BACKEND == "openai" else 100
)
# The bundled model's own window in tokens (prompt and reply), not the budget above:
# Gemma 3 270M is a tiny base model that copies from a long context rather than using it
# (issue 22: after 24 "fun fact" messages it answered everything with a fun fact). On
# eight everyday questions after such a room (bench/model.py, docs/benchmarks.md), 4 of
# 8 answers parroted with the old 4,096, 2 with 1,024 and 1 with 512: the last ~8 turns
# are all it can use. It also bounds a room's first read (~300 tokens of history, under a
# second on 2 cores) and its kept state (~9 MB at 18 KB a token).
LLM_LOCAL_N_CTX = env.int("LLM_LOCAL_N_CTX", default=512)
# Cap on one bundled-model reply: it stops at the end of its line, one or two sentences;
# a lower cap than LLM_MAX_TOKENS leaves the window's room to the conversation.
LLM_LOCAL_MAX_TOKENS = env.int("LLM_LOCAL_MAX_TOKENS", default=128)
# Kept llama.cpp states of conversations the bundled model left for another room's reply,
# so a room's next turn reads only its new tail: 128 MB keeps about 14 rooms' full windows
# (more for shorter ones); the least recently used goes first. 0: keep none (the model
# still continues from the room it is in).
LLM_LOCAL_STATE_CACHE_MB = env.int("LLM_LOCAL_STATE_CACHE_MB", default=128)
# llama.cpp's repetition penalty for the bundled model's sampling (1.0: none). 1.3 changed
# no parroting answer on the benchmark's questions (docs/benchmarks.md), so it stays off.
LLM_LOCAL_REPEAT_PENALTY = env.float("LLM_LOCAL_REPEAT_PENALTY", default=1.0)
# False: the earlier path, for comparison only (bench/model.py): the window slides by a
# turn each reply and no state is kept, so each reply in a busy room reads its whole prompt.
LLM_LOCAL_REUSE = env.bool("LLM_LOCAL_REUSE", default=True)
# Threads for llama.cpp: the machine has 2 cores; leave the event loop room to breathe.
LLM_LOCAL_THREADS = env.int("LLM_LOCAL_THREADS", default=2)

# --- Room events and replies -------------------------------------------------------------

# Replay log kept per room (docs/protocol.md "The event stream" promises at least 1,000 events and
# 10 minutes): a client that drops for a short while resumes exactly where it was.
PARLEY_LOG_MIN_EVENTS = env.int("PARLEY_LOG_MIN_EVENTS", default=1000)
PARLEY_LOG_MIN_SECONDS = env.float("PARLEY_LOG_MIN_SECONDS", default=600.0)
# Hard cap on a room's log, so a runaway room cannot exhaust memory: at ~33 frames/s for
# one streaming reply, 30,000 events cover the 10 minutes with margin (a few MB).
PARLEY_LOG_MAX_EVENTS = env.int("PARLEY_LOG_MAX_EVENTS", default=30000)
# Seqs are reserved from the database in blocks so that a restarted process never reuses
# one, at one database write per block rather than one per event.
PARLEY_SEQ_BLOCK = env.int("PARLEY_SEQ_BLOCK", default=1000)
# Adaptive delta coalescing: a reply's text goes out at once when the room's outbound is
# idle (this process has written the previous delta to every local member) and at least
# this long after the previous delta; otherwise it is merged into the next one. 5 ms caps a
# reply at 200 frames/s, which a reader cannot tell from per-token, and keeps every token
# of a model at 50-100 tokens/s its own frame in a quiet room.
PARLEY_DELTA_MIN_INTERVAL = env.float("PARLEY_DELTA_MIN_INTERVAL", default=0.005)
# The longest a delta waits for the room's outbound to drain before it goes anyway: a
# stalled fan-out (thousands of members) then merges tokens at ~20 frames/s instead of
# holding the text back.
PARLEY_DELTA_MAX_WAIT = env.float("PARLEY_DELTA_MAX_WAIT", default=0.05)
# Longest text one delta carries; more is sent as several deltas in a row. 16,384
# characters is at most ~100 KB of JSON: far below the 1 MiB frame every WebSocket client
# accepts by default, and small enough that one frame never nears the slow-reader bound.
PARLEY_DELTA_MAX_CHARS = env.int("PARLEY_DELTA_MAX_CHARS", default=16384)
# While streaming, the reply's text is saved at least this often, so a crash loses at
# most this much (docs/protocol.md "Who controls a reply"), without a database write per token.
PARLEY_SAVE_INTERVAL = env.float("PARLEY_SAVE_INTERVAL", default=1.0)
# A paused reply that nobody resumes ends as stopped (pause_timeout) after this long, so
# a forgotten pause cannot hold the room's queue and the model forever.
PARLEY_PAUSE_TIMEOUT = env.float("PARLEY_PAUSE_TIMEOUT", default=600.0)
# Sends per user: a burst of this many, refilled at this rate. Enough for a fast typist,
# too few for a script flooding a room or the model.
PARLEY_SEND_BURST = env.int("PARLEY_SEND_BURST", default=10)
PARLEY_SEND_PER_SECOND = env.float("PARLEY_SEND_PER_SECOND", default=1.0)
# Edits, deletes, ratings and version picks per user (chat/ratelimit.py: a bucket apart
# from sends). Each is an event to every member of the room; 20 at once covers tidying up
# a conversation or rating a page of replies, and one a second after that is more than a
# person clicks, while a script flipping a rating is held to one event a second per room.
PARLEY_ACTION_BURST = env.int("PARLEY_ACTION_BURST", default=20)
PARLEY_ACTION_PER_SECOND = env.float("PARLEY_ACTION_PER_SECOND", default=1.0)
# A resend with the same client_id within this window returns the first send's message
# instead of a second one (docs/protocol.md). Clients resend after seconds or minutes (a
# reconnect, a store outage of PARLEY_STORE_RETRY_SECONDS); an hour also covers a laptop
# lid closed over lunch, and the lookup is one indexed probe whatever the window.
PARLEY_SEND_IDEMPOTENCY_WINDOW = env.float("PARLEY_SEND_IDEMPOTENCY_WINDOW", default=3600.0)
# Largest WebSocket frame a client may send (docs/protocol.md "WebSocket"): closes with 1009.
PARLEY_MAX_FRAME_BYTES = env.int("PARLEY_MAX_FRAME_BYTES", default=64 * 1024)
# Messages in a snapshot (docs/protocol.md "The event stream").
PARLEY_SNAPSHOT_MESSAGES = env.int("PARLEY_SNAPSHOT_MESSAGES", default=50)
# Replies waiting in one room's queue; past it a send that asks for a reply gets busy.
PARLEY_ROOM_QUEUE_MAX = env.int("PARLEY_ROOM_QUEUE_MAX", default=20)
# Replies one member may have waiting (queued, not started) in one room; one more gets
# busy. The bundled model takes 5-20 s a reply on 2 cores, so 3 ahead of someone is about a
# minute at most: a burst cannot starve the room (issue 22 saw 10 from one member hold
# another's question for 122 s), while asking a follow-up before the answer ends still works.
PARLEY_ROOM_QUEUE_PER_MEMBER = env.int("PARLEY_ROOM_QUEUE_PER_MEMBER", default=3)
# Redis keys of the event log and live message state live this long after a room's last
# event: far beyond the 10-minute replay promise, short enough that idle rooms go away.
PARLEY_REDIS_TTL = env.int("PARLEY_REDIS_TTL", default=24 * 3600)
# How long an event emit keeps retrying while Redis is unreachable (a restart takes a
# few seconds) before the reply it belongs to fails cleanly.
PARLEY_STORE_RETRY_SECONDS = env.float("PARLEY_STORE_RETRY_SECONDS", default=15.0)
# Each room, once per process, checks this often whether it missed the room's latest event
# (a pub/sub message lost while Redis restarted) and catches up from the log if so; the
# same timer re-checks its connections' access, so a revoked token, a deactivated user or
# a removed member is cut off within this (plus one query) - well inside 5 s.
PARLEY_RESYNC_INTERVAL = env.float("PARLEY_RESYNC_INTERVAL", default=2.0)
# Recent encoded frames each room keeps per process: a reconnect storm after a blip replays
# from them with no store read and no encode (the log itself holds far more).
PARLEY_FANOUT_RECENT_FRAMES = env.int("PARLEY_FANOUT_RECENT_FRAMES", default=1000)
# A room with no connection left in a process keeps its subscription this long, so members
# reconnecting after a deploy or a network blip find it warm.
PARLEY_ROOM_LINGER = env.float("PARLEY_ROOM_LINGER", default=30.0)
# Presence changes of one room are broadcast at most this often: a burst of joins makes one
# event, not one per join to every member (N joins x N members).
PARLEY_PRESENCE_DEBOUNCE = env.float("PARLEY_PRESENCE_DEBOUNCE", default=0.25)
# ...and in a big room the interval grows with its size (each event reaches every member),
# up to this: who is online in a room of thousands can lag a few seconds.
PARLEY_PRESENCE_DEBOUNCE_MAX = env.float("PARLEY_PRESENCE_DEBOUNCE_MAX", default=5.0)
# Names listed in hello/presence "online"; past it the list is cut and "online_count" says
# how many are online (no screen shows thousands of names; the event stays small).
PARLEY_PRESENCE_LIST_MAX = env.int("PARLEY_PRESENCE_LIST_MAX", default=200)
# A process proves it is alive by refreshing a Redis key this often; replies of a process
# silent for PARLEY_WORKER_LEASE seconds are marked interrupted by the survivors. The
# lease is several heartbeats long so one slow beat never kills a live process's reply.
PARLEY_WORKER_HEARTBEAT = env.float("PARLEY_WORKER_HEARTBEAT", default=2.0)
PARLEY_WORKER_LEASE = env.float("PARLEY_WORKER_LEASE", default=10.0)
# Bytes a WebSocket may have waiting unsent in the server before the client is deemed too
# slow and closed with 4408 (it then resumes with ?after=): bounds server memory per
# connection while leaving room for a burst of several seconds of streaming.
PARLEY_WS_MAX_BUFFER = env.int("PARLEY_WS_MAX_BUFFER", default=1024 * 1024)
# Room WebSockets plus SSE streams one user may hold open in one process; past it a
# handshake closes with 4429 (SSE: HTTP 429). A person with a few tabs and devices, or a
# bot watching several rooms, stays far below 20; a script opening thousands is stopped
# before its handshakes cost the members a room lookup, a presence write and a replay
# each. 0 turns the cap off.
PARLEY_MAX_CONNECTIONS_PER_USER = env.int("PARLEY_MAX_CONNECTIONS_PER_USER", default=20)
# WebSocket handshakes worked on at once per process; the rest wait their turn in the
# event loop. Each makes a few calls on the ORM's one shared thread, which also serves
# every open connection's frames, so this bounds the queue in front of a member's ping.
# Measured on 2 cores with 1,000 handshakes 50 at a time (bench/flood.py): another user's
# ping p95 was ~560 ms with no gate, ~420 ms at 32, ~100 ms at 8, ~30-50 ms at 2-4, while
# refused handshakes still went through at ~110/s. 0 turns the gate off.
PARLEY_HANDSHAKE_CONCURRENCY = env.int("PARLEY_HANDSHAKE_CONCURRENCY", default=16)
# How long a cross-process control (pause/resume/stop sent to another process's reply)
# waits for the owner's answer before reporting busy.
PARLEY_CONTROL_TIMEOUT = env.float("PARLEY_CONTROL_TIMEOUT", default=5.0)
# SSE: a comment line this often keeps proxies from closing an idle stream (the contract,
# docs/protocol.md "Server-sent events", promises one at least every 15 s; 10 s leaves
# margin for a slow loop).
PARLEY_SSE_PING_INTERVAL = env.float("PARLEY_SSE_PING_INTERVAL", default=10.0)
# POST .../messages with "wait": true holds the request until the reply ends, up to this
# long; a reply still running then answers 504 with the reply to follow over SSE or GET.
PARLEY_WAIT_TIMEOUT = env.float("PARLEY_WAIT_TIMEOUT", default=120.0)

# --- The OpenAI-compatible API (/v1/, chat/openai_api/) ------------------------------------

# The largest max_tokens / max_output_tokens a request may ask: above every model's output
# window today, so a larger number is a mistake (or an attack on a counter), answered 400.
PARLEY_OPENAI_MAX_TOKENS = env.int("PARLEY_OPENAI_MAX_TOKENS", default=131072)
# OpenAI's own bounds on `stop`: at most 4 sequences; each at most this many characters
# (a stop sequence is a word or a marker, never a paragraph).
PARLEY_OPENAI_STOP_MAX = 4
PARLEY_OPENAI_STOP_CHARS = env.int("PARLEY_OPENAI_STOP_CHARS", default=200)
# A streamed completion or response sends an SSE comment this often while the reply waits
# in its room's line or the model is silent, so proxies keep an idle stream open (the
# room's own SSE keeps the same pace, PARLEY_SSE_PING_INTERVAL).
PARLEY_OPENAI_PING_INTERVAL = env.float("PARLEY_OPENAI_PING_INTERVAL", default=10.0)

# --- Voice (docs/protocol.md "Audio frames") ----------------------------------------------

# piper: the bundled voice, in process; openai: /v1/audio/speech; volcano: bidirectional WS.
TTS_BACKEND = env.str("TTS_BACKEND", default="piper")
# onnxruntime threads for one Piper synthesis: as fast as two on this 2-core class of
# machine, and it leaves a core for the server and the model.
PIPER_THREADS = env.int("PIPER_THREADS", default=1)
# Audio chunks the Piper worker may run ahead of the sender (~2 s): never stalls a reader.
PIPER_QUEUE_CHUNKS = env.int("PIPER_QUEUE_CHUNKS", default=8)
PIPER_MODEL_PATH = env.str("PIPER_MODEL_PATH", default="")  # empty: the bundled voice
PIPER_CONFIG_PATH = env.str("PIPER_CONFIG_PATH", default="")
OPENAI_TTS_BASE_URL = env.str("OPENAI_TTS_BASE_URL", default="") or OPENAI_BASE_URL
OPENAI_TTS_API_KEY = env.str("OPENAI_TTS_API_KEY", default="") or OPENAI_API_KEY
OPENAI_TTS_MODEL = env.str("OPENAI_TTS_MODEL", default="gpt-4o-mini-tts")
OPENAI_TTS_VOICE = env.str("OPENAI_TTS_VOICE", default="alloy")
# pcm is OpenAI's headerless 24 kHz; wav for servers that pick their own rate.
OPENAI_TTS_FORMAT = env.str("OPENAI_TTS_FORMAT", default="pcm")
OPENAI_TTS_CONNECT_TIMEOUT = env.float("OPENAI_TTS_CONNECT_TIMEOUT", default=5.0)
# The first byte waits for synthesis to start; covers a cold self-hosted server.
OPENAI_TTS_READ_TIMEOUT = env.float("OPENAI_TTS_READ_TIMEOUT", default=30.0)
VOLCANO_TTS_URL = env.str(
    "VOLCANO_TTS_URL", default="wss://openspeech.bytedance.com/api/v3/tts/bidirection"
)
VOLCANO_APP_KEY = env.str("VOLCANO_APP_KEY", default="")
VOLCANO_ACCESS_KEY = env.str("VOLCANO_ACCESS_KEY", default="")
VOLCANO_RESOURCE_ID = env.str("VOLCANO_RESOURCE_ID", default="seed-tts-1.0")
VOLCANO_SPEAKER = env.str("VOLCANO_SPEAKER", default="zh_female_shuangkuaisisi_moon_bigtts")
VOLCANO_SAMPLE_RATE = env.int("VOLCANO_SAMPLE_RATE", default=24000)
VOLCANO_CONNECT_TIMEOUT = env.float("VOLCANO_CONNECT_TIMEOUT", default=5.0)
# Silence accepted only after the text is complete.
VOLCANO_READ_TIMEOUT = env.float("VOLCANO_READ_TIMEOUT", default=10.0)
# Qwen-TTS on Alibaba Cloud Model Studio (DashScope). Beijing by default; Singapore is
# https://dashscope-intl.aliyuncs.com/api/v1 and wss://dashscope-intl.aliyuncs.com/...,
# with a key of its own (a key works only in its region).
DASHSCOPE_API_KEY = env.str("DASHSCOPE_API_KEY", default="")
QWEN_TTS_BASE_URL = env.str("QWEN_TTS_BASE_URL", default="https://dashscope.aliyuncs.com/api/v1")
QWEN_TTS_REALTIME_URL = env.str(
    "QWEN_TTS_REALTIME_URL", default="wss://dashscope.aliyuncs.com/api-ws/v1/realtime"
)
# normal and streaming modes (HTTP); realtime mode (WebSocket) has models of its own.
QWEN_TTS_MODEL = env.str("QWEN_TTS_MODEL", default="qwen3-tts-flash")
QWEN_TTS_REALTIME_MODEL = env.str("QWEN_TTS_REALTIME_MODEL", default="qwen3-tts-flash-realtime")
QWEN_TTS_VOICE = env.str("QWEN_TTS_VOICE", default="Cherry")
# Auto lets the service tell; Chinese, English, ... help a text of one known language.
QWEN_TTS_LANGUAGE = env.str("QWEN_TTS_LANGUAGE", default="Auto")
QWEN_TTS_CONNECT_TIMEOUT = env.float("QWEN_TTS_CONNECT_TIMEOUT", default=5.0)
# Normal mode's answer waits for a whole reply's audio file: tens of seconds of speech
# made several times faster than real time. Realtime mode counts silence only once the
# text is complete.
QWEN_TTS_READ_TIMEOUT = env.float("QWEN_TTS_READ_TIMEOUT", default=30.0)
# How far ahead of real time a reply's audio is sent (seconds; 0: as fast as it is made).
# Enough to ride out a network hiccup; less means less wasted audio when a reply is cut off,
# and no bursts of audio to every listener crowding the server (voice/speech.py).
VOICE_AUDIO_LEAD = env.float("VOICE_AUDIO_LEAD", default=1.5)
# Load the bundled voice when the server starts rather than at the first spoken reply.
VOICE_PRELOAD = env.bool("VOICE_PRELOAD", default=True)
# Where GET /api/messages/<id>/audio keeps the WAV of each reply once made.
VOICE_CACHE_DIR = env.path("VOICE_CACHE_DIR", default=BASE_DIR / "var" / "audio")

# --- Speech in (voice conversation; docs/protocol.md "speech") ---------------------------

# whisper: the bundled tiny.en model through faster-whisper, in process, no keys;
# openai: any OpenAI-compatible /v1/audio/transcriptions server.
STT_BACKEND = env.str("STT_BACKEND", default="whisper")
STT_MODEL_PATH = env.str("STT_MODEL_PATH", default="")  # empty: the bundled tiny.en
# CTranslate2 threads for one transcription: both cores of this class of machine, for
# the second or so it takes (transcriptions run one at a time per process).
STT_THREADS = env.int("STT_THREADS", default=2)
STT_BEAM_SIZE = env.int("STT_BEAM_SIZE", default=1)
STT_LANGUAGE = env.str("STT_LANGUAGE", default="")  # empty: English (tiny.en)
STT_PRELOAD = env.bool("STT_PRELOAD", default=True)
OPENAI_STT_BASE_URL = env.str("OPENAI_STT_BASE_URL", default="") or OPENAI_BASE_URL
OPENAI_STT_API_KEY = env.str("OPENAI_STT_API_KEY", default="") or OPENAI_API_KEY
OPENAI_STT_MODEL = env.str("OPENAI_STT_MODEL", default="whisper-1")
OPENAI_STT_CONNECT_TIMEOUT = env.float("OPENAI_STT_CONNECT_TIMEOUT", default=5.0)
OPENAI_STT_READ_TIMEOUT = env.float("OPENAI_STT_READ_TIMEOUT", default=30.0)
# One utterance: at most this long (a spoken message, not a dictated page) and this
# many bytes of audio (30 s at 16 kHz is 0.96 MB; the HTTP body limit is Django's 2.5 MB
# DATA_UPLOAD_MAX_MEMORY_SIZE). Past either: speech_too_long.
PARLEY_SPEECH_MAX_SECONDS = env.float("PARLEY_SPEECH_MAX_SECONDS", default=30.0)
PARLEY_SPEECH_MAX_BYTES = env.int("PARLEY_SPEECH_MAX_BYTES", default=2 * 1024 * 1024)
# Speech audio is never stored unless this names a folder: then each utterance is kept
# there as <message id>.wav.
PARLEY_SPEECH_AUDIO_DIR = env.str("PARLEY_SPEECH_AUDIO_DIR", default="")

# --- Metrics (GET /metrics, Prometheus; README "Metrics") ---------------------------------

# When set, a scrape must carry "Authorization: Bearer <token>"; anything else is a 404.
# When unset, /metrics answers only to loopback and to the networks below (CIDR), and only
# to a request that reached this daphne directly: one that names a forwarded client (came
# through nginx) is refused, so a proxy never makes a visitor look local.
PARLEY_METRICS_TOKEN = env.str("PARLEY_METRICS_TOKEN", default="")
PARLEY_METRICS_ALLOW = env.list("PARLEY_METRICS_ALLOW", default=[])
# The models and assistant handles that get their own label; any other is "other", so a
# model name typed into the admin cannot add a series per value.
PARLEY_METRICS_MODELS = env.list("PARLEY_METRICS_MODELS", default=[LLM_MODEL])
PARLEY_METRICS_ASSISTANTS = env.list("PARLEY_METRICS_ASSISTANTS", default=["assistant"])
# off: collect nothing. Every instrumentation call becomes a no-op at start-up
# (core.metrics.configure) and /metrics answers 404. For measuring what the metrics cost
# (bench/run.py --metrics-cost) and for deployments that do not scrape; on by default.
PARLEY_METRICS = env.bool("PARLEY_METRICS", default=True)

# --- Tracing (OpenTelemetry, one trace per AI turn; core/tracing.py) ---------------------

# on: each assistant reply is traced from the send to its end (needs the "otel" extra,
# opentelemetry-api and -sdk; a start-up check says so when they are missing). Off by
# default, and then opentelemetry is never imported.
PARLEY_TRACING = env.bool("PARLEY_TRACING", default=False)
# Where the spans go: "otel", the exporters named by the standard OTEL_TRACES_EXPORTER
# (default otlp: install an exporter package, configured by its OTEL_EXPORTER_* variables);
# "memory", the SDK's in-memory exporter, for the tests (read through the SIGUSR1 dump).
PARLEY_TRACING_EXPORTER = env.str("PARLEY_TRACING_EXPORTER", default="otel")
