"""Friction schedules: which friction each segment of a non-stationary run uses, and when segments change.

Pure python and numpy, no gymnasium, so a schedule can be inspected or tested without an environment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np

PAPER_FRICTION_RANGE: tuple[float, float] = (0.02, 2.0)
PAPER_CHANGE_EVERY: int = 2_000_000


def _is_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, Integral) or (isinstance(value, float) and value.is_integer())


def _is_positive_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value) and value > 0


def check_positive_int(name: str, value: object, unit: str) -> int:
    """Return ``value`` as an ``int``, or raise ``ValueError`` if it is not a positive integer."""
    if not (_is_int(value) and value > 0):
        raise ValueError(f"{name}={value!r} is invalid: expected a positive integer number of {unit}")
    return int(value)


SCHEDULE_KWARGS = ("change_every", "friction_range", "frictions", "friction", "schedule_seed")
"""The env kwargs that make a Slippery env's friction schedule (the arguments of `FrictionSchedule`)."""


def check_friction(name: str, value: object) -> float:
    """Return ``value`` as a ``float``, or raise ``ValueError`` if it is not a positive finite number."""
    if not _is_positive_number(value):
        raise ValueError(f"{name}={value!r} is invalid: expected a positive finite friction coefficient")
    return float(value)


def _check_frictions(frictions: object) -> tuple[float, ...]:
    expected = "expected a non-empty sequence of positive finite friction coefficients"
    if isinstance(frictions, (str, bytes)) or not isinstance(frictions, (Sequence, np.ndarray)):
        raise ValueError(f"frictions={frictions!r} is invalid: {expected}")
    values = list(frictions)
    if not values:
        raise ValueError(f"frictions={values!r} is invalid: {expected}")
    for index, value in enumerate(values):
        if not _is_positive_number(value):
            raise ValueError(f"frictions={values!r} is invalid: {expected} (got {value!r} at index {index})")
    return tuple(float(v) for v in values)


def _check_range(friction_range: object) -> tuple[float, float]:
    expected = "expected (low, high) with 0 < low <= high, both finite"
    try:
        low, high = friction_range  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"friction_range={friction_range!r} is invalid: {expected}") from None
    if not (_is_positive_number(low) and _is_positive_number(high) and low <= high):
        raise ValueError(f"friction_range={friction_range!r} is invalid: {expected}")
    return float(low), float(high)


def _check_seed(seed: object) -> int:
    if not (_is_int(seed) and seed >= 0):
        raise ValueError(f"schedule_seed={seed!r} is invalid: expected a non-negative integer")
    return int(seed)


class FrictionSchedule:
    """
    A piecewise-constant friction schedule: segment ``k`` has one friction, and a segment ends at the
    first episode end after ``change_every`` environment steps have passed since it began (paper protocol).

    Exactly one source of frictions is used, by priority: ``friction`` (one fixed value, never changes),
    else ``frictions`` (used in order; after the last one the schedule stays on it for good), else
    draws log-uniform in ``friction_range`` from ``np.random.default_rng(schedule_seed)``, one
    unbounded sequence per seed. The friction of a segment is a pure function of these arguments.

    :param change_every: environment steps a segment lasts at least before it ends at an episode end
    :param friction_range: ``(low, high)`` of the log-uniform draws; unused when ``friction`` or
        ``frictions`` is given (but still checked)
    :param frictions: explicit friction of each segment, in order
    :param friction: one fixed friction for the whole run (evaluation)
    :param schedule_seed: seed of the drawn sequence; every environment built with the same seed sees
        the same sequence
    """

    def __init__(
        self,
        change_every: int = PAPER_CHANGE_EVERY,
        friction_range: tuple[float, float] = PAPER_FRICTION_RANGE,
        frictions: Sequence[float] | None = None,
        friction: float | None = None,
        schedule_seed: int = 0,
    ) -> None:
        self.change_every = check_positive_int("change_every", change_every, "environment steps")
        self.friction_range = _check_range(friction_range)
        self.schedule_seed = _check_seed(schedule_seed)
        if friction is not None and frictions is not None:
            raise ValueError(
                f"friction={friction!r} and frictions={frictions!r} are both given: "
                "expected at most one (friction for a fixed value, frictions for a sequence)"
            )
        self._rng: np.random.Generator | None = None
        if friction is not None:
            self._frictions = [check_friction("friction", friction)]
            self.num_segments: int | None = 1
        elif frictions is not None:
            self._frictions = list(_check_frictions(frictions))
            self.num_segments = len(self._frictions)
        else:
            self._frictions = []
            self.num_segments = None
            self._rng = np.random.default_rng(self.schedule_seed)

    def friction_at(self, segment: int) -> float:
        """Friction of segment ``segment`` (0-based); past the last explicit friction, the last one."""
        if segment < 0:
            raise ValueError(f"segment={segment!r} is invalid: expected a non-negative integer")
        if self._rng is None:
            return self._frictions[min(segment, len(self._frictions) - 1)]
        log_low, log_high = math.log(self.friction_range[0]), math.log(self.friction_range[1])
        while len(self._frictions) <= segment:
            self._frictions.append(math.exp(self._rng.uniform(log_low, log_high)))
        return self._frictions[segment]

    def is_last(self, segment: int) -> bool:
        """Whether ``segment`` is the final one (the schedule never leaves it)."""
        return self.num_segments is not None and segment >= self.num_segments - 1

    def __repr__(self) -> str:
        if self._rng is None:
            return f"FrictionSchedule(change_every={self.change_every}, frictions={self._frictions!r})"
        return (
            f"FrictionSchedule(change_every={self.change_every}, friction_range={self.friction_range}, "
            f"schedule_seed={self.schedule_seed})"
        )
