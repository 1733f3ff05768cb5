"""What a benchmark run measures: the variants, the phases, and the profiles
(``full`` for ``make bench``, ``quick`` for ``make bench-quick``, ``smoke``
for the end-to-end test) that size them."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from offpath.bench.echo import ENV_LAYER as ENV_ECHO_LAYER
from offpath.bench.echo import LAYERS as ECHO_LAYERS
from offpath.emitter.settings import ENV_EVENT_ID_TRAILER, ENV_SENDER
from offpath.query.settings import ENV_WORKERS


@dataclass(frozen=True)
class Variant:
    """One server configuration."""

    name: str
    module: str = "offpath.query"
    env: dict[str, str] = field(default_factory=dict)
    proxy: tuple[str, ...] | None = None  # fault proxy arguments, after --upstream
    # The sender this variant asks for explicitly (None: the default one).
    sender: str | None = None
    # Events reach DynamoDB: the next run waits until they have, so the
    # ingest side's work does not overlap it.
    delivers: bool = False
    # Reply-to-readable delay is sampled from this variant's events.
    freshness: bool = False
    # A variant with several workers: the same server with one (the
    # denominator of its gain).
    one_worker: str | None = None
    # The sender process is put back on the serving cores once the server
    # is up (the emitter moves it to the others when there are any): a host
    # with no spare core, such as a pod limited to one CPU.
    sender_on_serving_cores: bool = False

    @property
    def analytics(self) -> bool:
        return self.env.get("OFFPATH_ANALYTICS") == "background"

    @property
    def workers(self) -> int:
        return int(self.env.get(ENV_WORKERS, "1"))


_BACKGROUND = {"OFFPATH_ANALYTICS": "background"}

VARIANTS = {
    v.name: v
    for v in (
        # A bare grpc.aio server with a fixed reply: the floor.
        Variant("echo", "offpath.bench.echo"),
        # The same with offpath's request-path pieces added one at a time
        # (offpath.bench.echo's layers): what each costs per request.
        *(
            Variant(f"echo-{layer}", "offpath.bench.echo", env={ENV_ECHO_LAYER: layer})
            for layer in ECHO_LAYERS
            if layer != "bare"
        ),
        # The baseline of every ratio.
        Variant("off", env={"OFFPATH_ANALYTICS": "off"}),
        # The product, with the default sender ...
        Variant("background", env=_BACKGROUND, delivers=True, freshness=True),
        # ... and with each sender named (one is the default: it is skipped
        # as a duplicate of "background"; one may not exist yet: its server
        # refuses to start and the variant is reported as not available).
        Variant(
            "background-thread",
            env={**_BACKGROUND, ENV_SENDER: "thread"},
            sender="thread",
            delivers=True,
            freshness=True,
        ),
        Variant(
            "background-process",
            env={**_BACKGROUND, ENV_SENDER: "process"},
            sender="process",
            delivers=True,
            freshness=True,
        ),
        # The default sender with no other core to go to: it shares the
        # serving core, as the thread sender always does.
        Variant(
            "background-one-core",
            # Not sender="process": that would make it a duplicate of
            # "background", which it is not (its sender shares the core).
            env={**_BACKGROUND, ENV_SENDER: "process"},
            delivers=True,
            sender_on_serving_cores=True,
        ),
        # The product with the event id in trailing metadata on error replies
        # only (OFFPATH_EMIT_EVENT_ID_TRAILER=errors): what the trailer on
        # every OK reply costs is its difference from "background".
        Variant(
            "background-trailer-errors",
            env={**_BACKGROUND, ENV_EVENT_ID_TRAILER: "errors"},
            delivers=True,
        ),
        Variant("background-sqs-slow", env=_BACKGROUND, proxy=("--delay-ms", "100"), delivers=True),
        # SQS accepts connections and never answers: nothing is delivered,
        # and the drain at shutdown gives up after a second.
        Variant(
            "background-sqs-down",
            env={**_BACKGROUND, "OFFPATH_EMIT_DRAIN_TIMEOUT_S": "1"},
            proxy=("--blackhole",),
        ),
        # Each query awaits its own SQS call before replying (what the
        # original paid per query); only at the contrast rate, which the
        # local endpoint absorbs.
        Variant("blocking", env={"OFFPATH_ANALYTICS": "blocking"}, delivers=True),
        # Multi-process serving: a supervisor and 2 workers on one
        # SO_REUSEPORT port, beside the same server with one process.
        Variant(
            "off-2-workers",
            env={"OFFPATH_ANALYTICS": "off", ENV_WORKERS: "2"},
            one_worker="off",
        ),
        Variant(
            "background-2-workers",
            env={**_BACKGROUND, ENV_WORKERS: "2"},
            delivers=True,
            one_worker="background",
        ),
    )
}
BASELINE = "off"
# The floor: a bare grpc.aio server (the cost phase's baseline).
ECHO = "echo"

PhaseName = Literal["latency", "max_qps", "at_max", "contrast", "freshness", "workers", "cost"]
PHASE_NAMES: tuple[PhaseName, ...] = get_args(PhaseName)


@dataclass(frozen=True)
class Phase:
    """Rounds of one kind of load over some variants."""

    name: PhaseName
    variants: tuple[str, ...]
    warmup_s: float
    duration_s: float
    rate: float = 0.0  # open loop; at_max: set from the measured maximum
    concurrency: int = 0  # closed loop (max_qps, workers): requests in flight
    # Closed loop: connections the requests in flight are spread over (the
    # kernel balances connections, not requests, over a server's workers).
    channels: int = 1
    # AnalyticsIngest (and the DynamoDB work it makes the local endpoint do)
    # is paused while the load runs, and resumed to drain before the next
    # run: on a 2-core machine it shares the load generator's core, and even
    # at nice 19 it delayed the generator enough to double Query p99. Only
    # the freshness phase, which measures ingest, keeps it running.
    pause_ingest: bool = True
    # Whether the events of this phase's runs go to the events queue, for
    # AnalyticsIngest. Throughput phases emit tens of thousands of events a
    # run, which the local endpoint ingests at a few hundred a second (one
    # conditional write per event, on a core it shares): queued, they would
    # hold the freshness phase's events behind a backlog, keep the endpoint
    # busy for minutes after, and slow the local SQS down (its cost grows
    # with the queue). Their runs measure nothing downstream, so each sends
    # to a scratch queue of its own, deleted after the run (PurgeQueue is
    # allowed once a minute).
    keep_events: bool = True

    @property
    def closed(self) -> bool:
        return self.concurrency > 0


@dataclass(frozen=True)
class Profile:
    """How many rounds of what, per CPU mode."""

    name: str
    rounds: int
    phases: tuple[Phase, ...]
    # Unpinned mode (the second look, when the primary is pinned): these
    # phases only.
    unpinned_phases: tuple[Phase, ...]
    at_max_fraction: float = 0.8
    freshness_sample: int = 100
    # Seconds to wait for a run's last event to be readable before the next run.
    settle_timeout_s: float = 15.0

    def with_overrides(self, *, rounds: int | None = None, rate: float | None = None) -> Profile:
        profile = self if rounds is None else replace(self, rounds=rounds)
        if rate is None:
            return profile

        def at(phase: Phase) -> Phase:
            return replace(phase, rate=rate) if phase.name in ("latency", "freshness") else phase

        return replace(
            profile,
            phases=tuple(at(p) for p in profile.phases),
            unpinned_phases=tuple(at(p) for p in profile.unpinned_phases),
        )

    def only(self, names: Collection[str]) -> Profile:
        """The profile with only the named phases (in either mode)."""
        return replace(
            self,
            phases=tuple(p for p in self.phases if p.name in names),
            unpinned_phases=tuple(p for p in self.unpinned_phases if p.name in names),
        )


_SENDERS = ("background", "background-thread", "background-process")
_TRAILER = "background-trailer-errors"
_ONE_CORE = "background-one-core"
# The cost phase: the bare echo server, then each layer over it.
_ECHO_LAYERS = ("echo", *(f"echo-{layer}" for layer in ECHO_LAYERS if layer != "bare"))
_FAULTS = ("background-sqs-slow", "background-sqs-down")

PROFILES = {
    p.name: p
    for p in (
        Profile(
            "full",
            rounds=3,
            phases=(
                Phase(
                    "latency",
                    ("echo", "off", *_SENDERS, _ONE_CORE, _TRAILER, *_FAULTS),
                    2.0,
                    8.0,
                    rate=200.0,
                ),
                Phase(
                    "max_qps",
                    ("off", *_SENDERS, _ONE_CORE, _TRAILER),
                    1.0,
                    3.0,
                    concurrency=32,
                    keep_events=False,
                ),
                Phase("at_max", ("off", *_SENDERS), 1.0, 5.0, keep_events=False),
                Phase("contrast", ("off", "blocking"), 1.0, 4.0, rate=50.0),
                Phase(
                    "freshness",
                    ("background", "background-thread"),
                    1.0,
                    5.0,
                    rate=200.0,
                    pause_ingest=False,
                ),
                # Closed loop on the bare echo server and its layers: CPU
                # per request of each of offpath's pieces, with nothing else
                # in the server to hide it.
                Phase("cost", _ECHO_LAYERS, 1.0, 5.0, concurrency=32, keep_events=False),
            ),
            unpinned_phases=(
                Phase("latency", ("off", "background"), 2.0, 8.0, rate=200.0),
                # Unpinned: pinning the supervisor pins its workers with it.
                # 8 connections, 4 requests in flight on each, for 1 and for
                # 2 workers alike.
                Phase(
                    "workers",
                    ("off", "off-2-workers", "background", "background-2-workers"),
                    1.0,
                    3.0,
                    concurrency=32,
                    channels=8,
                    keep_events=False,
                ),
            ),
        ),
        Profile(
            "quick",
            rounds=2,
            phases=(
                Phase("latency", ("off", *_SENDERS, *_FAULTS), 0.5, 2.0, rate=200.0),
                Phase(
                    "max_qps", ("off", "background"), 0.5, 1.5, concurrency=32, keep_events=False
                ),
                Phase("at_max", ("off", "background"), 0.5, 1.5, keep_events=False),
                Phase("freshness", ("background",), 0.5, 2.0, rate=200.0, pause_ingest=False),
            ),
            unpinned_phases=(),
            freshness_sample=50,
        ),
        Profile(
            "smoke",
            rounds=1,
            phases=(
                Phase("latency", ("off", "background", *_FAULTS), 0.3, 1.0, rate=100.0),
                Phase("max_qps", ("off", "background"), 0.3, 1.0, concurrency=8, keep_events=False),
                Phase("at_max", ("off", "background"), 0.3, 1.0, keep_events=False),
                Phase("freshness", ("background",), 0.3, 1.0, rate=100.0, pause_ingest=False),
            ),
            unpinned_phases=(),
            freshness_sample=20,
        ),
    )
}
