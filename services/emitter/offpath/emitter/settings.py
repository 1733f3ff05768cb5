"""Emitter configuration: one constant per environment variable, defaults as
``_DEFAULT_*``, one frozen object built at start-up."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast, get_args

from offpath.emitter.redact import (
    MIN_HASH_KEY_CHARS,
    QUERY_TEXT_MODES,
    QueryTextMode,
    QueryTextPolicy,
)
from offpath.kit.settings import SettingsError, env_choice, env_float, env_int, env_optional_str
from offpath.kit.sqs import DEFAULT_QUEUE_NAME, ENV_QUEUE_URL, queue_name_from_env

ENV_LINGER_MS = "OFFPATH_EMIT_LINGER_MS"
ENV_MAX_QUEUE = "OFFPATH_EMIT_MAX_QUEUE"
ENV_EVENTS_PER_MESSAGE = "OFFPATH_EMIT_EVENTS_PER_MESSAGE"
ENV_MAX_MESSAGE_BYTES = "OFFPATH_SQS_MAX_MESSAGE_BYTES"
ENV_RETRY_DEADLINE_S = "OFFPATH_EMIT_RETRY_DEADLINE_S"
ENV_DRAIN_TIMEOUT_S = "OFFPATH_EMIT_DRAIN_TIMEOUT_S"
ENV_PRODUCER_ID = "OFFPATH_PRODUCER_ID"
ENV_SENDER = "OFFPATH_EMIT_SENDER"
ENV_SPOOL_DIR = "OFFPATH_EMIT_SPOOL_DIR"
ENV_SPOOL_MAX_BYTES = "OFFPATH_EMIT_SPOOL_MAX_BYTES"
ENV_EVENT_ID_TRAILER = "OFFPATH_EMIT_EVENT_ID_TRAILER"
ENV_QUERY_TEXT = "OFFPATH_EMIT_QUERY_TEXT"
ENV_QUERY_HASH_KEY = "OFFPATH_EMIT_QUERY_HASH_KEY"
ENV_QUERY_HASH_KEY_FILE = "OFFPATH_EMIT_QUERY_HASH_KEY_FILE"

# One send a second keeps SQS calls (and their ~3.5 ms of CPU each on the
# serving process) rare enough not to show in Query p99; freshness stays
# well inside the 2 s budget.
_DEFAULT_LINGER_MS = 1000
_DEFAULT_MAX_QUEUE = 20_000
_DEFAULT_EVENTS_PER_MESSAGE = 500
# 256 KiB: the limit every SQS account accepts (newer ones allow 1 MiB).
_DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
_DEFAULT_RETRY_DEADLINE_S = 30.0
_DEFAULT_DRAIN_TIMEOUT_S = 10.0
# Where the batching, encoding and AWS calls run: a sender process of its
# own (events leave the serving process at emit time), or a thread of the
# serving process (events wait in its memory until the flush).
SENDERS = ("process", "thread")
_DEFAULT_SENDER = "process"
# The spool keeps what could not be sent (and, as a write-ahead log, what
# the sender holds); bounded so a long outage cannot fill the disk.
_DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
# Which replies carry the event id in trailing metadata: every reply, or
# only those that end in an error. Every reply by default, so any client can
# correlate.
EventIdTrailer = Literal["always", "errors"]
EVENT_ID_TRAILERS: tuple[EventIdTrailer, ...] = get_args(EventIdTrailer)
_DEFAULT_EVENT_ID_TRAILER: EventIdTrailer = "always"
# What of a query's text an event carries (see offpath.emitter.redact):
# masked personal data unless the operator chooses otherwise.
_DEFAULT_QUERY_TEXT: QueryTextMode = "redact"
# SendMessageBatch takes at most 10 entries.
MESSAGES_PER_CALL = 10

# Characters SQS accepts in a MessageGroupId.
_GROUP_ID_UNSAFE = re.compile(r"[^A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]")


def default_producer_id() -> str:
    """host-pid, restricted to what a FIFO MessageGroupId allows."""
    return sanitize_producer_id(f"{socket.gethostname()}-{os.getpid()}")


def sanitize_producer_id(raw: str) -> str:
    return _GROUP_ID_UNSAFE.sub("_", raw)[:128] or "producer"


@dataclass(frozen=True, slots=True)
class EmitterSettings:
    """How the emitter buffers, batches and sends, and what of a query's
    text its events carry.

    The hash key is a secret: it is in no ``repr``, no log line
    (:meth:`describe`) and not in :meth:`to_json`, which becomes the sender
    process's command line (readable by every user of the host). The sender
    process reads the key again, from the ``OFFPATH_EMIT_QUERY_HASH_KEY`` it
    inherits or from ``query_hash_key_file``.
    """

    queue_name: str = DEFAULT_QUEUE_NAME
    queue_url: str | None = None
    producer_id: str = "producer"
    linger_s: float = _DEFAULT_LINGER_MS / 1000
    max_queue_size: int = _DEFAULT_MAX_QUEUE
    events_per_message: int = _DEFAULT_EVENTS_PER_MESSAGE
    max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES
    retry_deadline_s: float = _DEFAULT_RETRY_DEADLINE_S
    drain_timeout_s: float = _DEFAULT_DRAIN_TIMEOUT_S
    sender: str = _DEFAULT_SENDER
    spool_dir: str | None = None
    spool_max_bytes: int = _DEFAULT_SPOOL_MAX_BYTES
    event_id_trailer: EventIdTrailer = _DEFAULT_EVENT_ID_TRAILER
    query_text: QueryTextMode = _DEFAULT_QUERY_TEXT
    query_hash_key: str | None = field(default=None, repr=False)
    query_hash_key_file: str | None = None

    def __post_init__(self) -> None:
        if self.query_text not in QUERY_TEXT_MODES:
            raise SettingsError(
                f"query text mode {self.query_text!r} is not one of {', '.join(QUERY_TEXT_MODES)}"
            )
        if self.query_text == "hash" and not self.query_hash_key:
            raise SettingsError(
                f"{ENV_QUERY_TEXT}=hash needs a key: set {ENV_QUERY_HASH_KEY} "
                f"or {ENV_QUERY_HASH_KEY_FILE}"
            )

    def query_text_policy(self) -> QueryTextPolicy:
        """What the sender does to each event's query text."""
        key = self.query_hash_key.encode() if self.query_hash_key else None
        return QueryTextPolicy(self.query_text, key)

    def describe(self) -> dict[str, object]:
        """What the ``emitter_started`` log line says about these settings."""
        return {
            "sender": self.sender,
            "queue": self.queue_url or self.queue_name,
            "linger_s": self.linger_s,
            "max_queue": self.max_queue_size,
            "events_per_message": self.events_per_message,
            "producer_id": self.producer_id,
            "spool": self.spool_dir,
            "event_id_trailer": self.event_id_trailer,
            "query_text": self.query_text,
        }

    def to_json(self) -> str:
        """These settings as JSON (how the sender process receives them),
        without the hash key (see the class docstring)."""
        fields = dataclasses.asdict(self)
        del fields["query_hash_key"]
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str, env: Mapping[str, str] | None = None) -> EmitterSettings:
        """Settings from :meth:`to_json`'s text; with ``hash``, the key is read
        again from ``env`` (by default the process's environment) or the key file."""
        fields = json.loads(text)
        if fields.get("query_text") == "hash":
            fields["query_hash_key"] = _hash_key(
                os.environ if env is None else env, fields.get("query_hash_key_file")
            )
        return cls(**fields)

    @property
    def max_export_batch(self) -> int:
        """Events handed to the sink at once: enough to fill one SendMessageBatch."""
        return self.events_per_message * MESSAGES_PER_CALL

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EmitterSettings:
        producer = env_optional_str(env, ENV_PRODUCER_ID)
        if producer is not None and sanitize_producer_id(producer) != producer:
            raise SettingsError(
                f"{ENV_PRODUCER_ID}={producer!r} has characters a FIFO MessageGroupId "
                "does not allow, or is longer than 128"
            )
        sender = env_choice(env, ENV_SENDER, _DEFAULT_SENDER, SENDERS)
        trailer = env_choice(
            env, ENV_EVENT_ID_TRAILER, _DEFAULT_EVENT_ID_TRAILER, EVENT_ID_TRAILERS
        )
        query_text = cast(
            "QueryTextMode",
            env_choice(env, ENV_QUERY_TEXT, _DEFAULT_QUERY_TEXT, QUERY_TEXT_MODES),
        )
        key_file = env_optional_str(env, ENV_QUERY_HASH_KEY_FILE)
        if query_text == "hash":
            if key_file is not None and env_optional_str(env, ENV_QUERY_HASH_KEY) is not None:
                raise SettingsError(
                    f"both {ENV_QUERY_HASH_KEY} and {ENV_QUERY_HASH_KEY_FILE} are set: "
                    "give the key one way"
                )
            hash_key: str | None = _hash_key(env, key_file)
        else:
            for name in (ENV_QUERY_HASH_KEY, ENV_QUERY_HASH_KEY_FILE):
                if env_optional_str(env, name) is not None:
                    raise SettingsError(
                        f"{name} is set but {ENV_QUERY_TEXT}={query_text!r}: the key is for "
                        "hash only (set hash, or unset the key)"
                    )
            hash_key, key_file = None, None
        spool_dir = env_optional_str(env, ENV_SPOOL_DIR)
        if spool_dir is not None and sender != "process":
            raise SettingsError(
                f"{ENV_SPOOL_DIR} is set but {ENV_SENDER}={sender!r}: the spool is the "
                "sender process's (use process, or unset the spool)"
            )
        return cls(
            # The queue only: a producer never needs the DLQ's or the table's names.
            queue_name=queue_name_from_env(env),
            queue_url=env_optional_str(env, ENV_QUEUE_URL),
            producer_id=producer or default_producer_id(),
            linger_s=env_int(env, ENV_LINGER_MS, _DEFAULT_LINGER_MS, minimum=1, maximum=60_000)
            / 1000,
            max_queue_size=env_int(
                env, ENV_MAX_QUEUE, _DEFAULT_MAX_QUEUE, minimum=1, maximum=10_000_000
            ),
            events_per_message=env_int(
                env, ENV_EVENTS_PER_MESSAGE, _DEFAULT_EVENTS_PER_MESSAGE, minimum=1, maximum=10_000
            ),
            max_message_bytes=env_int(
                env,
                ENV_MAX_MESSAGE_BYTES,
                _DEFAULT_MAX_MESSAGE_BYTES,
                minimum=4096,
                maximum=1024 * 1024,
            ),
            retry_deadline_s=env_float(
                env, ENV_RETRY_DEADLINE_S, _DEFAULT_RETRY_DEADLINE_S, minimum=0, maximum=3600
            ),
            drain_timeout_s=env_float(
                env, ENV_DRAIN_TIMEOUT_S, _DEFAULT_DRAIN_TIMEOUT_S, minimum=0, maximum=3600
            ),
            sender=sender,
            spool_dir=spool_dir,
            spool_max_bytes=env_int(
                env,
                ENV_SPOOL_MAX_BYTES,
                _DEFAULT_SPOOL_MAX_BYTES,
                minimum=1024 * 1024,
                maximum=1024**4,
            ),
            event_id_trailer=cast("EventIdTrailer", trailer),
            query_text=query_text,
            query_hash_key=hash_key,
            query_hash_key_file=key_file,
        )


def _hash_key(env: Mapping[str, str], key_file: str | None) -> str:
    """The hash key, from the key file when one is named, else from the
    environment; checked, and never echoed in an error."""
    if key_file is not None:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SettingsError(
                f"{ENV_QUERY_HASH_KEY_FILE}={key_file!r} cannot be read: {reason}"
            ) from None
        source = f"{ENV_QUERY_HASH_KEY_FILE}={key_file!r}"
    else:
        key = (env.get(ENV_QUERY_HASH_KEY) or "").strip()
        source = ENV_QUERY_HASH_KEY
    if not key:
        raise SettingsError(
            f"{ENV_QUERY_TEXT}=hash needs a key: set {ENV_QUERY_HASH_KEY} "
            f"or {ENV_QUERY_HASH_KEY_FILE}"
            if key_file is None
            else f"{source} is empty"
        )
    if len(key) < MIN_HASH_KEY_CHARS:
        raise SettingsError(
            f"{source}: the key is shorter than {MIN_HASH_KEY_CHARS} characters "
            "(use a random string, e.g. `openssl rand -hex 32`)"
        )
    return key
