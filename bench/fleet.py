"""The fleet simulation: the product's claim decision and write budget, driven for days of reports.

    python -m bench.fleet [--devices 100000] [--scripts 3] [--interval 3600] [--changes 0.02]
                          [--days 3] [--rate <BRIDGE_GRAPH_WRITES_PER_SECOND default>]
                          [--refresh <BRIDGE_REFRESH_INTERVAL default, s>] [--shard 1]
                          [--also 500000x5@0.5/10] [--cold]

Discrete events in simulated time, no I/O. Every report of every (script, device) pair is decided
by `shared.policy.decide_claim` (with the fleet's refresh age bar) and every write slot is
reserved by `shared.pacing.SharedBudget` itself (its clock is the simulated one, its table an
in-memory TableClient with ETag semantics), following the steps of `Delivery._ordered`: a slot
the pair already booked is used (or waited for); otherwise a change books the next slot however
far ahead and comes back for it, and a refresh takes only a slot free within
BUDGET_WAIT_SECONDS, tries again as `shared.policy.refresh_retry` says, and then ends
(`refresh_skipped`: the pair's next report is due again). What is not simulated: the hosts
(assumed always ready; no processing time, no poll delay), 429s (the budget keeps Graph under
its limit), storage failures.

`--shard K` simulates 1/K of the devices with 1/K of the budget (every share, age and latency is
the whole fleet's, write rates are multiplied back); its budget slots are K times coarser against
the fixed 3 s horizon, which favours idle budget, so the default is the whole fleet.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from bench._stack import header, percentile, verdict, write_json
from shared.pacing import MAX_RETRY_AFTER, SharedBudget
from shared.policy import (
    SLOT_LATENESS,
    Claim,
    PairState,
    books_ahead,
    decide_claim,
    refresh_retry,
)
from shared.settings import BUDGET_WAIT_SECONDS, Settings

# Graph's own limit per app per tenant: 200 writes in any 20 s.
GRAPH_WINDOW = 20.0
GRAPH_WINDOW_WRITES = 200
LATENCY_GOAL = 300.0
REFRESH_GOAL = 1.10


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


DEFAULT_RATE = float(_default("graph_writes_per_second"))
DEFAULT_REFRESH = _default("refresh_interval").total_seconds()
DEFAULT_ATTEMPTS = int(_default("max_attempts"))
DEFAULT_MAX_AGE = _default("max_age").total_seconds()


class _Entity(dict):
    """A read entity: its properties plus `metadata["etag"]`, as azure-data-tables returns."""

    def __init__(self, fields: dict[str, Any], etag: str) -> None:
        super().__init__(fields)
        self.metadata = {"etag": etag}


class MemoryTable:
    """The three TableClient calls SharedBudget makes, with the service's ETag rules and errors."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self.calls = 0
        self._etags = 0

    def _etag(self) -> str:
        self._etags += 1
        return f'W/"{self._etags}"'

    def get_entity(self, partition_key: str, row_key: str) -> _Entity:
        self.calls += 1
        found = self.rows.get((partition_key, row_key))
        if found is None:
            raise ResourceNotFoundError("The specified resource does not exist.")
        return _Entity(found[0], found[1])

    def create_entity(self, entity: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        key = (entity["PartitionKey"], entity["RowKey"])
        if key in self.rows:
            raise ResourceExistsError("The specified entity already exists.")
        etag = self._etag()
        self.rows[key] = (dict(entity), etag)
        return {"etag": etag}

    def update_entity(
        self, entity: dict[str, Any], mode: str = "merge", etag: str | None = None, **_: Any
    ) -> dict[str, Any]:
        self.calls += 1
        key = (entity["PartitionKey"], entity["RowKey"])
        found = self.rows.get(key)
        if found is None:
            raise ResourceNotFoundError("The specified resource does not exist.")
        if etag is not None and etag != found[1]:
            raise ResourceModifiedError("The update condition specified was not met.")
        fields = {**found[0], **entity} if mode == "merge" else dict(entity)
        new = self._etag()
        self.rows[key] = (fields, new)
        return {"etag": new}


@dataclass(frozen=True)
class Fleet:
    """One fleet and its settings; every figure of a run follows from these and the seed."""

    devices: int = 100_000
    scripts: int = 3
    interval: float = 3600.0  # seconds between two reports of one pair
    changes: float = 0.02  # share of reports whose state differs from the pair's previous one
    days: float = 3.0
    rate: float = DEFAULT_RATE  # BRIDGE_GRAPH_WRITES_PER_SECOND
    refresh: float = DEFAULT_REFRESH  # BRIDGE_REFRESH_INTERVAL, seconds (0: write everything)
    max_attempts: int = DEFAULT_ATTEMPTS
    max_age: float = DEFAULT_MAX_AGE
    warm: bool = True  # start from a written fleet (else from empty rows: every pair changes)
    seed: int = 16
    # Simulate 1/shard of the devices with 1/shard of the budget: every ratio, age and latency
    # is the whole fleet's, the write rates are multiplied back; only the budget's slots are
    # `shard` times coarser (1/(0.95 x rate/shard) s apart) against the fixed 3 s horizon.
    shard: int = 1

    def part(self) -> Fleet:
        """The fleet actually simulated: one shard of the devices and of the budget."""
        return Fleet(
            **{
                **asdict(self),
                "devices": self.devices // self.shard,
                "rate": self.rate / self.shard,
            }
        )

    @property
    def pairs(self) -> int:
        return self.devices * self.scripts

    @property
    def change_rate(self) -> float:
        return self.pairs * self.changes / self.interval

    def refresh_limit(self, budget: float) -> float:
        """The oldest last write can be no younger than one full cycle of the spare budget."""
        spare = budget - self.change_rate
        return self.pairs / spare if spare > 0 else math.inf


def reports(fleet: Fleet) -> Iterator[tuple[float, int, bool]]:
    """Every report in time order: (time, pair, state changed), each pair at its own phase."""
    rng = random.Random(fleet.seed)
    phase = [rng.random() * fleet.interval for _ in range(fleet.pairs)]
    order = sorted(range(fleet.pairs), key=phase.__getitem__)
    end = fleet.days * 86400
    cycle = 0
    while True:
        base = cycle * fleet.interval
        for pair in order:
            at = base + phase[pair]
            if at >= end:
                return
            yield at, pair, rng.random() < fleet.changes
        cycle += 1


def simulate(fleet: Fleet, schedule: Iterator[tuple[float, int, bool]] | None = None) -> dict:
    """Run the fleet; returns its writes, change latencies and refresh ages."""
    rng = random.Random(fleet.seed + 1)
    n = fleet.pairs
    end = fleet.days * 86400
    clock = [0.0]
    table = MemoryTable()
    budget = SharedBudget(
        table,
        fleet.rate,
        clock=lambda: clock[0],
        sleep=lambda _: None,
        refresh_interval=fleet.refresh,
    )
    limit = fleet.refresh_limit(fleet.rate)
    # A warm fleet starts as one written round-robin at the spare budget (or within the
    # refresh interval, if that is longer): the steady state the goals are measured against.
    spread = max(limit if math.isfinite(limit) else 0.0, fleet.refresh)
    state = [1] * n  # the pair's current state (its digest)
    digest = [1 if fleet.warm else 0] * n  # what the destination last got (0: nothing yet)
    written = [-rng.random() * spread if fleet.warm else -math.inf for _ in range(n)]
    accepted = [-1] * n  # versions: the report's time in ms (fixed width in the product)
    delivered = [-1] * n
    booked = [0.0] * n  # the run-state row's SlotAt: a slot the pair booked and has not used
    pending = [-1.0] * n  # when the oldest undelivered change of the pair was reported
    writes: list[float] = []
    change_writes = 0
    latencies: list[float] = []
    ages: list[float] = []  # a pair's refresh age when a refresh write replaced it
    outcome = {"superseded": 0, "duplicate": 0, "unchanged": 0, "refresh_skipped": 0}
    outcome |= {"poisoned": 0, "retried": 0, "slot_waits": 0, "reports": 0, "slots": 0}
    outcome |= {"inherited": 0, "refresh_retried": 0}
    day_oldest = [0.0] * (math.ceil(fleet.days) + 1)
    heap: list[tuple[float, int, int, int, int, int, float]] = []
    seq = 0
    horizon = BUDGET_WAIT_SECONDS
    superseded, duplicate, unchanged = Claim.SUPERSEDED, Claim.DELIVERED, Claim.UNCHANGED

    def later(at: float, p: int, version: int, dig: int, *, tries: int, slot_at: float) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (at, seq, p, version, dig, tries, slot_at))

    def handle(event: tuple[float, int, int, int, int, int, float]) -> None:
        nonlocal change_writes
        now, _, p, version, dig, tries, slot_at = event
        clock[0] = now
        if slot_at >= 0 and slot_at - now > horizon + 1:
            # Delivery._ordered: back early for a far slot, wait again without a claim or a try.
            outcome["slot_waits"] += 1
            wait = min(max(math.floor(slot_at - now) - 1, 0), MAX_RETRY_AFTER)
            later(now + max(wait, 1), p, version, dig, tries=tries, slot_at=slot_at)
            return
        pair = PairState(accepted[p], delivered[p], 0.0, digest[p], written[p], booked[p])  # type: ignore[arg-type]
        decision = decide_claim(
            pair,
            version,  # type: ignore[arg-type]
            dig,  # type: ignore[arg-type]
            now,
            fleet.refresh,
            refresh_bar=budget.refresh_after,
            key=str(p),
        )
        claim = decision.claim
        if claim is superseded:
            outcome["superseded"] += 1
            return
        if claim is duplicate:
            outcome["duplicate"] += 1
            return
        if claim is unchanged:
            delivered[p] = version
            outcome["unchanged"] += 1
            return
        change = decision.change
        if slot_at < 0 and decision.slot_at is not None:
            slot_at = decision.slot_at
            outcome["inherited"] += 1
        at = None
        if slot_at >= 0:  # Delivery._take_budget with a booked slot
            if slot_at - now > horizon:
                booked[p] = slot_at
                outcome["retried"] += 1
                wait = max(math.floor(slot_at - now) - 1, 0)
                later(now + wait, p, version, dig, tries=tries + 1, slot_at=slot_at)
                return
            if slot_at - now >= -SLOT_LATENESS:
                at = max(slot_at, now)
        if at is None:
            slot = budget.reserve(
                horizon,
                book_ahead=books_ahead(change),
                refresh_rank=None if change else decision.rank,
                last_try=change
                or refresh_retry(tries - 1, 0.0, decision.rank, budget.refresh_after) is None,
            )
            outcome["slots"] += slot.at is not None
            if slot.at is not None and slot.wait <= horizon:
                at = slot.at
            elif not change and slot.at is None:
                # Delivery._ordered: a few tries spread over the next minutes, then it ends.
                booked[p] = 0.0
                again = refresh_retry(tries - 1, rng.random(), decision.rank, budget.refresh_after)
                if again is None or slot.reason == "not_due":
                    outcome["refresh_skipped"] += 1
                    return
                outcome["refresh_retried"] += 1
                later(now + math.ceil(again), p, version, dig, tries=tries + 1, slot_at=-1.0)
                return
            else:
                accepted_ms = version / 1000
                if tries >= fleet.max_attempts or now - accepted_ms > fleet.max_age:
                    outcome["poisoned"] += 1
                    booked[p] = 0.0
                    return
                outcome["retried"] += 1
                if slot.at is None:  # the gate or heavy contention: back after the wait
                    later(
                        now + math.ceil(slot.wait), p, version, dig, tries=tries + 1, slot_at=-1.0
                    )
                    return
                booked[p] = slot.at
                wait = min(max(math.floor(slot.wait) - 1, 0), MAX_RETRY_AFTER)
                later(now + wait, p, version, dig, tries=tries + 1, slot_at=slot.at)
                return
        writes.append(at)
        booked[p] = 0.0
        delivered[p] = version
        digest[p] = dig
        age = at - written[p]
        written[p] = at
        if change:
            change_writes += 1
            if dig == state[p] and pending[p] >= 0:
                latencies.append(at - pending[p])
                pending[p] = -1.0
        else:
            ages.append(age)
            day = int(at // 86400)
            if day < len(day_oldest) and age > day_oldest[day]:
                day_oldest[day] = age

    started = time.perf_counter()
    for t, p, changed in schedule if schedule is not None else reports(fleet):
        while heap and heap[0][0] <= t:
            handle(heapq.heappop(heap))
        outcome["reports"] += 1
        if changed:
            state[p] += 1
        if pending[p] < 0 and state[p] != digest[p]:
            pending[p] = t  # the destination is behind from this report on
        version = int(t * 1000)
        if version <= accepted[p]:
            continue  # ingest's stale check (never: a pair's reports are an interval apart)
        accepted[p] = version
        handle((t, 0, p, version, state[p], 1, -1.0))
    while heap and heap[0][0] < end:
        handle(heapq.heappop(heap))
    wall = time.perf_counter() - started
    writes.sort()
    # A slot reserved just before the end may lie up to BUDGET_WAIT_SECONDS past it.
    late = len(writes) - bisect.bisect_left(writes, end)
    # Waiting changes (their slots lie past the end) count as undelivered, with their age so far.
    undelivered = [end - since for since in pending if since >= 0 and since < end - 0.0]
    oldest_now = max(end - w for w in written) if n else 0.0
    peak = max(
        (bisect.bisect_left(writes, w + GRAPH_WINDOW) - i for i, w in enumerate(writes)), default=0
    )
    span = end
    return {
        "fleet": asdict(fleet),
        "pairs": n,
        "wall_seconds": wall,
        "outcomes": outcome,
        "table_calls": table.calls,
        "writes": len(writes),
        "change_writes": change_writes,
        "refresh_writes": len(writes) - change_writes,
        "writes_after_end": late,
        "writes_per_second": (len(writes) - late) / span,
        "change_writes_per_second": change_writes / span,
        "peak_writes_20s": peak,
        "latency": _summary(latencies),
        "undelivered_changes": len(undelivered),
        "undelivered_oldest": max(undelivered, default=0.0),
        "refresh_age_at_write": _summary(ages),
        "oldest_refresh_age": max(oldest_now, max(ages, default=0.0)),
        "oldest_refresh_age_at_end": oldest_now,
        "oldest_refresh_by_day": day_oldest[: math.ceil(fleet.days)],
        "refresh_after_at_end": budget.refresh_after,
        "booked_at_end": sum(1 for at in booked if at >= end),
    }


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values, default=float("nan")),
    }


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if not math.isfinite(seconds):
        return "unbounded"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def report(result: dict, whole: Fleet) -> dict[str, bool | None]:
    """Print one run (of `whole`, or of one shard of it) next to its physical limits.

    Returns the goals' verdicts. Rates and counts of a shard are multiplied back by `shard`.
    """
    fleet = whole
    k = whole.shard
    result = {
        **result,
        "writes_per_second": result["writes_per_second"] * k,
        "change_writes_per_second": result["change_writes_per_second"] * k,
        "refresh_writes": result["refresh_writes"] * k,
        "peak_writes_20s": result["peak_writes_20s"] * k,
    }
    ceiling = fleet.rate * 0.95  # SharedBudget's own headroom
    limit = fleet.refresh_limit(fleet.rate)
    demand = fleet.pairs / fleet.interval
    print(
        f"\n-- {fleet.devices:,} devices x {fleet.scripts} scripts = {fleet.pairs:,} pairs, "
        f"a report every {_duration(fleet.interval)}, {fleet.changes:.1%} of reports change "
        f"state, {fleet.days:g} simulated days"
    )
    print(
        f"   budget {fleet.rate:g} writes/s (the product reserves at most 0.95 x = "
        f"{ceiling:.2f}/s), refresh interval {_duration(fleet.refresh)}, "
        f"max attempts {fleet.max_attempts}; {'warm' if fleet.warm else 'cold'} start"
    )
    print(
        f"   offered: {demand:.1f} reports/s, {fleet.change_rate:.2f} changes/s, refresh demand "
        f"{(fleet.pairs / fleet.refresh if fleet.refresh else demand):.2f}/s"
    )
    if k > 1:
        print(
            f"   simulated: a shard of 1/{k}, {result['pairs']:,} pairs at {fleet.rate / k:g} "
            f"writes/s; write rates and the busiest 20 s below are the shard's x {k}"
        )
    print(
        f"   simulated {result['outcomes']['reports']:,} reports in {result['wall_seconds']:.0f} s "
        f"wall; outcomes {result['outcomes']}"
    )
    lat, ages = result["latency"], result["refresh_age_at_write"]
    print(
        f"   writes/s {result['writes_per_second']:.2f} (changes "
        f"{result['change_writes_per_second']:.2f}, refreshes "
        f"{result['refresh_writes'] / (fleet.days * 86400):.2f}); limit: the budget, "
        f"{fleet.rate:g}/s"
    )
    print(
        f"   change latency p50 {_duration(lat['p50'])}, p99 {_duration(lat['p99'])}, max "
        f"{_duration(lat['max'])} over {lat['count']:,} delivered changes; "
        f"{result['undelivered_changes']:,} still waiting at the end (oldest "
        f"{_duration(result['undelivered_oldest'])})"
    )
    print(
        f"   refresh age when refreshed: p50 {_duration(ages['p50'])}, p99 "
        f"{_duration(ages['p99'])}; oldest refresh age {_duration(result['oldest_refresh_age'])} "
        f"(per day: {', '.join(_duration(a) for a in result['oldest_refresh_by_day']) or '-'})"
    )
    print(
        f"   limit: pairs / (budget - change rate) = "
        f"{_duration(limit) if math.isfinite(limit) else 'none: changes alone exceed the budget'} "
        f"(at the 0.95 ceiling: {_duration(fleet.refresh_limit(ceiling))}); "
        f"the refresh interval allows no less than {_duration(fleet.refresh)}"
    )
    # The oldest refresh age cannot beat the limit at the budget the product spends (0.95 x the
    # setting), nor the refresh interval plus one report interval. Judged on the last simulated
    # day (the steady state; the first carries the warm start's spread), and shown against the
    # limit at the full setting too.
    floor = fleet.refresh_limit(ceiling)
    if fleet.refresh:
        floor = max(floor, fleet.refresh + fleet.interval)
    steady = result["oldest_refresh_by_day"][-1] if result["oldest_refresh_by_day"] else 0.0
    goals = {
        "change latency p99 <= 5 min": lat["p99"] <= LATENCY_GOAL
        and result["undelivered_oldest"] <= LATENCY_GOAL,
        "oldest refresh age within 10% of the limit": steady <= REFRESH_GOAL * floor,
        "no 20 s window over 200 writes": result["peak_writes_20s"] <= GRAPH_WINDOW_WRITES,
    }
    if not math.isfinite(floor):
        goals["oldest refresh age within 10% of the limit"] = None  # no limit: nothing to meet
    print(
        f"   busiest 20 s: {result['peak_writes_20s']} writes (Graph allows "
        f"{GRAPH_WINDOW_WRITES}; the setting {fleet.rate * GRAPH_WINDOW:.0f})"
    )
    if math.isfinite(floor):
        print(
            f"   oldest refresh age on the last day {_duration(steady)}: {steady / floor:.2f} x "
            f"the floor {_duration(floor)} (at the 0.95 ceiling), "
            f"{steady / limit if math.isfinite(limit) else math.inf:.2f} x the limit at the "
            f"full setting; refresh age bar at the end {_duration(result['refresh_after_at_end'])}"
        )
    out = result["outcomes"]
    ahead = result["booked_at_end"]
    wasted = out["slots"] - result["writes"] - ahead
    print(
        f"   budget slots reserved {out['slots'] * k:,}, written {result['writes'] * k:,}, "
        f"booked past the end {ahead * k:,} ({wasted * k:,} unused); refresh tries again "
        f"{out['refresh_retried'] * k:,}, "
        f"refreshes ended unwritten {out['refresh_skipped'] * k:,}, slots taken over by a "
        f"newer report {out['inherited'] * k:,}"
    )
    for goal, ok in goals.items():
        print(
            f"   {goal}: {'n/a (changes alone exceed the budget)' if ok is None else verdict(ok)}"
        )
    return goals


SIZING_PAIRS = (10_000, 30_000, 100_000, 300_000, 500_000, 1_000_000, 2_500_000)
SIZING_INTERVALS = (900.0, 3600.0, 4 * 3600.0, 8 * 3600.0)


def sizing(changes: float, rate: float, refresh: float) -> list[list[str]]:
    """Oldest refresh age each fleet can have at best, at this budget and refresh interval.

    The budget the product uses is 0.95 x rate. A pair is refreshed at its first report after
    the interval, so no better than interval + report interval; and no better than one cycle of
    the spare budget. `*`: refreshes due exceed the spare budget (the limit, not the interval,
    sets the age); `changes > budget`: changes alone exceed it and queue without end.
    """
    usable = rate * 0.95
    rows = []
    for pairs in SIZING_PAIRS:
        row = [f"{pairs:,}"]
        for interval in SIZING_INTERVALS:
            fleet = Fleet(devices=pairs, scripts=1, interval=interval, changes=changes)
            change_rate = fleet.change_rate
            if change_rate >= usable:
                row.append(f"changes > budget ({change_rate:.1f}/s)")
                continue
            cycle = fleet.refresh_limit(usable)
            floor = refresh + interval if refresh else 0.0
            row.append(_duration(max(cycle, floor)) + (" *" if cycle > floor else ""))
        rows.append(row)
    return rows


def print_sizing(changes: float, rate: float, refresh: float) -> None:
    print(
        f"\noldest refresh age at best (pairs = devices x scripts; {changes:.0%} of reports "
        f"change; budget {rate:g}/s, of which the product uses {rate * 0.95:.2f}; refresh "
        f"interval {_duration(refresh)}):"
    )
    heads = ["pairs", *(f"every {_duration(i)}" for i in SIZING_INTERVALS)]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for row in sizing(changes, rate, refresh):
        print("| " + " | ".join(row) + " |")


def _fleet_spec(text: str, base: Fleet) -> Fleet:
    """`500000x5@0.5/50`: devices x scripts, @ simulated days, / shard."""
    text, _, shard = text.partition("/")
    size, _, days = text.partition("@")
    devices, _, scripts = size.partition("x")
    return Fleet(
        **{
            **asdict(base),
            "devices": int(devices),
            "scripts": int(scripts or 1),
            "days": float(days or base.days),
            "shard": int(shard or base.shard),
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    base = Fleet()
    parser.add_argument("--devices", type=int, default=base.devices)
    parser.add_argument("--scripts", type=int, default=base.scripts)
    parser.add_argument("--interval", type=float, default=base.interval, help="seconds")
    parser.add_argument("--changes", type=float, default=base.changes)
    parser.add_argument("--days", type=float, default=base.days)
    parser.add_argument("--rate", type=float, default=base.rate)
    parser.add_argument("--refresh", type=float, default=base.refresh, help="seconds")
    parser.add_argument("--cold", action="store_true", help="start from empty run-state rows")
    parser.add_argument("--seed", type=int, default=base.seed)
    parser.add_argument("--shard", type=int, default=1, help="simulate 1/shard of the fleet")
    parser.add_argument(
        "--also",
        default="500000x5@0.5/10",
        help="more fleets, devices x scripts @ days, comma-separated ('' for none)",
    )
    parser.add_argument("--sizing", action="store_true", help="print the sizing table only")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.sizing:
        print_sizing(args.changes, args.rate, args.refresh)
        return 0
    header("fleet simulation: decide_claim + SharedBudget in simulated time")
    fleet = Fleet(
        devices=args.devices,
        scripts=args.scripts,
        interval=args.interval,
        changes=args.changes,
        days=args.days,
        rate=args.rate,
        refresh=args.refresh,
        warm=not args.cold,
        seed=args.seed,
        shard=args.shard,
    )
    runs = [fleet, *(_fleet_spec(s, fleet) for s in args.also.split(",") if s)]
    out = []
    for each in runs:
        result = simulate(each.part())
        result["goals"] = report(result, each)
        out.append(result)
    write_json(args.json, {"runs": out})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
