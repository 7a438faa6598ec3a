"""Chaos: random faults that a seed replays.

Each matching request draws its fate from ``random.Random(f"{seed}/{route}/{n}")``,
where ``n`` counts the earlier matching requests of the same route (method,
host, path): the choices depend only on the seed and each route's order, so
concurrency elsewhere changes nothing and ``--fwdproxy-seed`` replays a run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

from .rules import Rule


class Outcome(Enum):
    """What chaos does to one request (besides its latency)."""

    PASS = "pass"
    ERROR = "error"  # a proxy error page with one of the statuses
    RESET = "reset"  # a TCP reset before the response
    TRUNCATE = "truncate"  # the head, then a close before the body

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ChaosChoice:
    """What chaos did to the ``n``-th matching request of ``route`` (from 0)."""

    route: str
    n: int
    outcome: Outcome
    latency: float
    status: int | None = None  # for Outcome.ERROR

    @property
    def faulty(self) -> bool:
        return self.outcome is not Outcome.PASS

    def __str__(self) -> str:
        what = f"error {self.status}" if self.outcome is Outcome.ERROR else self.outcome.value
        return f"{self.route} #{self.n}: {what}" + (f" +{self.latency:.3f}s" if self.latency else "")


@dataclass(eq=False, repr=False)
class Chaos(Rule):
    """Random faults whose choices depend only on the seed and each route's request order."""

    seed: int = 0
    error_rate: float = 0.0
    statuses: tuple[int, ...] = (500, 502, 503, 504)
    latency: tuple[float, float] | None = None
    reset_rate: float = 0.0
    truncate_rate: float = 0.0
    choices: list[ChaosChoice] = field(default_factory=list, init=False)
    _counts: dict[str, int] = field(default_factory=dict, init=False)
    name: ClassVar[str] = "chaos"

    def __post_init__(self) -> None:
        super().__post_init__()
        rates = {"error_rate": self.error_rate, "reset_rate": self.reset_rate,
                 "truncate_rate": self.truncate_rate}
        for key, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"chaos: {key}={rate!r} is not between 0 and 1")
        if sum(rates.values()) > 1.0:
            raise ValueError(f"chaos: error_rate, reset_rate and truncate_rate add up to "
                             f"{sum(rates.values()):g}, more than 1")
        if self.error_rate and not self.statuses:
            raise ValueError("chaos: error_rate needs at least one status in statuses")
        if self.latency is not None and not 0 <= self.latency[0] <= self.latency[1]:
            raise ValueError(f"chaos: latency={self.latency!r} must be (low, high) with 0 <= low <= high")

    def choose(self, route: str) -> ChaosChoice:
        """The next choice for ``route`` (call with the registry's lock held)."""
        n = self._counts.get(route, 0)
        self._counts[route] = n + 1
        rng = random.Random(f"{self.seed}/{route}/{n}")  # str seeds are hashed with SHA-512: stable
        latency = rng.uniform(*self.latency) if self.latency else 0.0
        draw = rng.random()
        status = None
        if draw < self.error_rate:
            outcome, status = Outcome.ERROR, rng.choice(self.statuses)
        elif draw < self.error_rate + self.reset_rate:
            outcome = Outcome.RESET
        elif draw < self.error_rate + self.reset_rate + self.truncate_rate:
            outcome = Outcome.TRUNCATE
        else:
            outcome = Outcome.PASS
        choice = ChaosChoice(route, n, outcome, latency, status)
        self.choices.append(choice)
        return choice

    def params(self) -> str:
        return f"seed={self.seed}"
