"""Schedule maths: validate task schedules and expand them into fire instants.

A pure module: it uses the standard library, python-dateutil, croniter and jmespath, and never
reads the clock, so callers always pass ``after`` or ``now``.

Kinds: ``cron`` (5-field Vixie cron), ``rrule`` (RFC 5545), ``once`` (ISO 8601 date-time),
``event`` (a topic name or glob) and ``condition`` (a JMESPath expression). Only the first three
have time occurrences.

DST policy, the same for cron, rrule and wall-clock ``once``: a schedule is evaluated on naive
wall-clock times in the task's timezone, and each wall time becomes one instant:

* a wall time inside a spring-forward gap fires at the transition, the first valid instant
  after the gap; all wall times of one gap collapse into that single firing;
* a wall time that occurs twice (fall-back) fires once, at its first instant (``fold=0``).

Results carry ``tzinfo=ZoneInfo(timezone)``. Compare them in UTC (or by ``timestamp()``): Python
compares two datetimes that share a tzinfo by wall time, ignoring ``fold``, and never finds a
datetime inside a repeated fall-back hour equal to one in another zone (PEP 495).
"""

from __future__ import annotations

import bisect
import calendar
import copy
import functools
import heapq
import itertools
import math
import re
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import jmespath
import jmespath.exceptions
from croniter import CroniterBadDateError, CroniterError, croniter
from dateutil.rrule import DAILY, HOURLY, MINUTELY, MONTHLY, WEEKLY, YEARLY, rrule, rrulestr

__all__ = [
    "HORIZON_YEARS",
    "KINDS",
    "MAX_OCCURRENCES",
    "ScheduleError",
    "next_occurrences",
    "validate",
    "with_dtstart",
]

KINDS = ("cron", "rrule", "once", "event", "condition")

# The longest wait a cron or rrule schedule is searched for: from `after` to the first occurrence
# and from each occurrence to the next. A schedule with nothing inside it is invalid; the bound is
# what keeps a never-matching rule from stalling the scheduler. It bounds each gap rather than the
# whole window, so a rule whose occurrences are years apart (29 February) still yields `n` of them.
HORIZON_YEARS = 10
_HORIZON = timedelta(days=366 * HORIZON_YEARS)

# Largest `n` accepted by next_occurrences, so one call's work stays bounded.
MAX_OCCURRENCES = 1000

# Candidates a single call may discard (duplicates from a DST gap, the repeated fall-back hour,
# EXDATEs) before it gives up; far above anything a real schedule produces.
_MAX_SKIPPED = 10_000

# A COUNT rule is replayed from DTSTART on every call, so its size and reach are capped.
_MAX_COUNT = 1000
_COUNT_SPAN = timedelta(days=366 * 100)

# Rules reshaped by _RRule._anchored: at most this many times of day, and MONTHLY periods only
# while a month's worth of times stays cheap to scan.
_MAX_TIMES_PER_DAY = 1440
_MONTHLY_MAX_TIMES = 24

_MAX_INTERVAL = 1_000_000
_MIN_YEAR, _MAX_YEAR = 1900, 8999
_MAX_EXPR_LENGTH = 4096
_MAX_TOPIC_LENGTH = 200
_CACHE_SIZE = 4096

# dateutil only stops looking for a match when it passes this year, so evaluation is moved close
# to it (see _calendar_shift).
_SHIFT_CEILING_YEAR = 9998


class ScheduleError(ValueError):
    """An invalid schedule; the message says what is wrong and can be shown to the user."""


def next_occurrences(
    kind: str, expr: str, timezone: str, after: datetime, n: int
) -> list[datetime]:
    """Return up to `n` fire instants strictly after `after`, earliest first.

    `after` must be timezone-aware. Results are strictly increasing, all later than `after`,
    expressed in ``ZoneInfo(timezone)``. The search gives up on a wait longer than HORIZON_YEARS,
    from `after` to the first result or from one result to the next (``once`` has no horizon), so
    fewer than `n` (possibly none) means the schedule has nothing more within that wait;
    ``event`` and ``condition`` never have time occurrences. An RRULE without DTSTART is
    anchored at `after` (seconds zeroed), so its INTERVAL phase and COUNT restart on every call:
    store rules through with_dtstart. Raises ScheduleError for an invalid schedule or a naive
    `after`, and ValueError when `n` is outside 0..MAX_OCCURRENCES.
    """
    schedule = _parse(kind, expr, timezone)
    start = _as_utc(after, "after")
    if not isinstance(n, int) or not 0 <= n <= MAX_OCCURRENCES:
        raise ValueError(f"n must be an integer between 0 and {MAX_OCCURRENCES}, got {n!r}")
    instants = itertools.islice(schedule.instants_after(start), n)
    return [instant.astimezone(schedule.tz) for instant in instants]


def validate(kind: str, expr: str, timezone: str, now: datetime) -> None:
    """Check that a schedule can be stored; return None or raise ScheduleError.

    Beyond syntax, a ``once`` must lie after `now`, and a cron or RRULE schedule must fire at least
    once within HORIZON_YEARS after `now`. `now` must be timezone-aware.
    """
    schedule = _parse(kind, expr, timezone)
    start = _as_utc(now, "now")
    if not schedule.has_times:
        return
    if next(schedule.instants_after(start), None) is None:
        raise ScheduleError(schedule.exhausted_message(start))


def with_dtstart(expr: str, timezone: str, dtstart: datetime) -> str:
    """Return the RRULE text anchored at `dtstart`, so its INTERVAL phase survives later calls.

    Prepends ``DTSTART;TZID=<timezone>:YYYYMMDDTHHMMSS`` (the wall time of `dtstart` in
    `timezone`, seconds dropped so BYHOUR/BYMINUTE rules fire on the minute) and writes a bare
    ``FREQ=...`` rule as ``RRULE:FREQ=...``. Text that already has a DTSTART is returned unchanged.
    Raises ScheduleError if the result is not a valid rrule or `dtstart` is naive.
    """
    _check_text(expr, "rrule")
    tz = _zone(timezone)
    lines = _content_lines(expr)
    if any(_split_content_line(line)[0] == "DTSTART" for line in lines):
        _parse("rrule", expr, timezone)
        return expr
    wall = _as_utc(dtstart, "dtstart").astimezone(tz).replace(tzinfo=None)
    body = expr.strip()
    if len(lines) == 1 and ":" not in body:
        body = f"RRULE:{body}"
    anchored = f"DTSTART;TZID={timezone}:{wall:%Y%m%dT%H%M00}\n{body}"
    _parse("rrule", anchored, timezone)
    return anchored


# --- parsing -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_cached(kind: str, expr: str, timezone: str) -> _Schedule:
    tz = _zone(timezone)
    if kind == "cron":
        return _parse_cron(expr, tz)
    if kind == "rrule":
        return _parse_rrule(expr, timezone, tz)
    if kind == "once":
        return _parse_once(expr, tz)
    if kind == "event":
        return _parse_event(expr, tz)
    return _parse_condition(expr, tz)


def _parse(kind: str, expr: str, timezone: str) -> _Schedule:
    # Type checks come first: the cache needs hashable arguments, and a clear message beats a
    # TypeError from deep inside a parser.
    if not isinstance(kind, str) or kind not in KINDS:
        raise ScheduleError(f"unknown schedule kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(timezone, str):
        raise ScheduleError(f"unknown timezone {timezone!r}")
    _check_text(expr, kind)
    return _parse_cached(kind, expr, timezone)


def _check_text(expr: object, kind: str) -> None:
    if not isinstance(expr, str) or not expr.strip():
        raise ScheduleError(f"{kind} schedule expression is empty")
    if len(expr) > _MAX_EXPR_LENGTH:
        raise ScheduleError(f"{kind} schedule expression is longer than {_MAX_EXPR_LENGTH} chars")


@functools.lru_cache(maxsize=1)
def _known_timezones() -> frozenset[str]:
    # "localtime" names whatever the host is set to, not an IANA zone.
    return frozenset(zoneinfo.available_timezones()) - {"localtime"}


def _zone(name: str) -> ZoneInfo:
    if name not in _known_timezones():
        raise ScheduleError(f"unknown timezone {name!r}")
    return ZoneInfo(name)


def _as_utc(moment: object, what: str) -> datetime:
    if not isinstance(moment, datetime):
        raise ScheduleError(f"{what} must be a datetime, got {type(moment).__name__}")
    if moment.utcoffset() is None:
        raise ScheduleError(f"{what} must be timezone-aware, got naive {moment.isoformat()}")
    instant = moment.astimezone(UTC)
    _check_year(instant, what)
    return instant


def _check_year(moment: datetime, what: str) -> None:
    if not _MIN_YEAR <= moment.year <= _MAX_YEAR:
        raise ScheduleError(f"{what} must fall in the years {_MIN_YEAR}..{_MAX_YEAR}")


# --- wall time -> instant (the DST policy) -------------------------------------------------------


def _wall_to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    """Map a naive wall time to its firing instant under the DST policy."""
    # fold=0 picks the first of two instants in a fall-back overlap.
    instant = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant
    return _gap_end(wall, tz)


def _gap_end(wall: datetime, tz: ZoneInfo) -> datetime:
    """Return the transition instant that ends the spring-forward gap containing `wall`."""
    # Inside a gap, fold=1 reads `wall` with the post-transition offset (an instant before the
    # transition) and fold=0 with the pre-transition one (an instant after it); the transition
    # lies between, on a whole second, so bisect on POSIX seconds.
    low = int(wall.replace(tzinfo=tz, fold=1).timestamp()) - 1
    high = int(wall.replace(tzinfo=tz, fold=0).timestamp()) + 1
    offset_before = datetime.fromtimestamp(low, tz).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == offset_before:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)


def _wall_instants(walls: Iterable[datetime], tz: ZoneInfo) -> Iterator[datetime]:
    return (_wall_to_utc(wall, tz) for wall in walls)


def _firings(
    instants: Iterable[datetime],
    after: datetime,
    excluded: frozenset[datetime] = frozenset(),
) -> Iterator[datetime]:
    """Yield the non-decreasing `instants` that are > `after`, once each, until one comes more
    than _HORIZON after the previous one yielded (or after `after`, for the first)."""
    last = after
    skipped = 0
    for instant in instants:
        if instant > last + _HORIZON:
            return
        if instant <= last or instant in excluded:
            skipped += 1
            if skipped > _MAX_SKIPPED:
                return
            continue
        last = instant
        yield instant


# --- schedules -----------------------------------------------------------------------------------


class _Schedule:
    tz: ZoneInfo
    has_times = True

    def instants_after(self, after: datetime) -> Iterator[datetime]:
        """Yield UTC fire instants > `after` in increasing order."""
        raise NotImplementedError

    def exhausted_message(self, now: datetime) -> str:
        return f"schedule has no occurrence within {HORIZON_YEARS} years after {now.isoformat()}"


@dataclass(frozen=True)
class _NoTimes(_Schedule):
    """An ``event`` or ``condition`` schedule: valid, but never due by the clock."""

    tz: ZoneInfo
    has_times = False

    def instants_after(self, after: datetime) -> Iterator[datetime]:
        return iter(())


@dataclass(frozen=True)
class _Once(_Schedule):
    tz: ZoneInfo
    instant: datetime

    def instants_after(self, after: datetime) -> Iterator[datetime]:
        if self.instant > after:
            yield self.instant

    def exhausted_message(self, now: datetime) -> str:
        return (
            f"once time {self.instant.astimezone(self.tz).isoformat()} is not after "
            f"now ({now.astimezone(self.tz).isoformat()})"
        )


@dataclass(frozen=True)
class _Cron(_Schedule):
    tz: ZoneInfo
    expr: str
    prototype: croniter

    def instants_after(self, after: datetime) -> Iterator[datetime]:
        start = after.astimezone(self.tz).replace(tzinfo=None)
        walls = self._walls_after(start)
        return _firings(_wall_instants(walls, self.tz), after)

    def _walls_after(self, start: datetime) -> Iterator[datetime]:
        # croniter's constructor re-parses the expression (~0.4 ms); a shallow copy of the parsed
        # prototype is ~30x cheaper and shares only lists croniter never mutates. It runs on naive
        # wall times so that the DST policy above, not croniter's, decides each instant.
        cron = copy.copy(self.prototype)
        cron.set_current(start, force=True)
        while True:
            try:
                yield cron.get_next(datetime)
            except CroniterBadDateError:
                return  # nothing within max_years_between_matches

    def exhausted_message(self, now: datetime) -> str:
        return (
            f"cron expression {self.expr!r} has no occurrence within {HORIZON_YEARS} years "
            f"after {now.isoformat()}"
        )


@dataclass(frozen=True)
class _RRule(_Schedule):
    """A parsed RRULE block, evaluated on naive wall times in the task's timezone.

    `rule` is dateutil's rrule without UNTIL (kept here as the `until` instant) and with a
    placeholder start; each call re-anchors it with `rrule.replace`.
    """

    tz: ZoneInfo
    rule: rrule
    freq: int
    interval: int
    count: int | None
    wkst: int
    byhour: tuple[int, ...] | None
    byminute: tuple[int, ...] | None
    bysecond: tuple[int, ...] | None
    has_bysetpos: bool
    has_filter: bool  # BYHOUR, BYMINUTE or a day filter
    has_day_filter: bool  # BYMONTH, BYMONTHDAY, BYYEARDAY or BYDAY
    has_day_selector: bool  # BYMONTHDAY, BYYEARDAY or BYDAY
    dtstart: datetime | None
    until: datetime | None
    rdates: tuple[datetime, ...]
    exdates: frozenset[datetime]

    def instants_after(self, after: datetime) -> Iterator[datetime]:
        instants = self._rule_instants(after)
        if self.until is not None:
            until = self.until
            instants = itertools.takewhile(lambda instant: instant <= until, instants)
        rdates = self.rdates[bisect.bisect_right(self.rdates, after) :]
        return _firings(heapq.merge(instants, rdates), after, self.exdates)

    def _rule_instants(self, after: datetime) -> Iterator[datetime]:
        """Yield the rule's instants after `after`, searched one horizon-long window at a time.

        dateutil needs an end to search to, so the rule is walked in consecutive windows: the
        first ends _HORIZON after `after`, each next one _HORIZON after the latest instant found.
        A window with nothing in it ends the walk, which is exactly the gap rule of _firings. The
        walls of consecutive windows are disjoint, so no instant is yielded twice.
        """
        local = functools.partial(_utc_to_wall, tz=self.tz)
        anchor = local(after)
        window_start, window_end = after, after + _HORIZON
        while True:
            latest = None
            for wall in self._walls_after(local(window_start), local(window_end), anchor):
                latest = _wall_to_utc(wall, self.tz)
                yield latest
            if latest is None:
                return
            window_start, window_end = window_end, latest + _HORIZON

    def _walls_after(
        self, local_after: datetime, local_horizon: datetime, anchor: datetime
    ) -> Iterator[datetime]:
        """Yield the rule's wall times in (local_after, local_horizon], in order.

        A rule without DTSTART is anchored at `anchor` (the call's own `after`), so that every
        window of one call keeps the same INTERVAL phase.
        """
        if self.dtstart is None:
            start = anchor.replace(second=0, microsecond=0)
        elif self.count is None:
            start = _fast_forward(self.dtstart, self.freq, self.interval, local_after)
        else:
            # COUNT needs every occurrence since DTSTART; replaying them is bounded by the cap.
            start = self.dtstart
            local_horizon = min(local_horizon, start + _COUNT_SPAN)
        if start > local_horizon or local_after >= local_horizon:
            return
        shift = _calendar_shift(min(start, local_after).year - 1, local_horizon.year + 1)
        rule = self._anchored(_shift_years(start, shift))
        first = _shift_years(local_after, shift)
        last = _shift_years(local_horizon, shift)
        try:
            for wall in rule:
                if wall > last:
                    return
                if wall > first:
                    yield _shift_years(wall, -shift)
        except ValueError as exc:
            # dateutil detects some INTERVAL/BYHOUR/BYMINUTE combinations only while iterating.
            raise ScheduleError(f"RRULE never occurs: {exc}") from exc

    def _anchored(self, start: datetime) -> rrule:
        """Return the rule starting at `start`, reshaped into an equivalent cheaper rule.

        dateutil finds the next match by stepping through every period, days or minutes that
        cannot match included. Sub-daily rules with filters become DAILY rules listing their
        times of day, and DAILY rules with day filters become MONTHLY ones: same occurrences,
        far fewer empty periods to step through when the next match is years away.
        """
        changes: dict[str, object] = {"dtstart": start, "wkst": self.wkst}
        times = (
            self.byhour or (start.hour,),
            self.byminute or (start.minute,),
            self.bysecond or (start.second,),
        )
        freq, interval = self.freq, self.interval
        if freq in (HOURLY, MINUTELY) and self.has_filter:
            times = self._times_of_day(start)
            freq, interval = DAILY, 1
            changes |= dict(zip(("byhour", "byminute", "bysecond"), times, strict=True))
            changes |= {"freq": DAILY, "interval": 1}
        if (
            freq == DAILY
            and interval == 1
            and self.has_day_filter
            and not self.has_bysetpos
            and math.prod(map(len, times)) <= _MONTHLY_MAX_TIMES
        ):
            changes["freq"] = MONTHLY
            if not self.has_day_selector:
                changes["byweekday"] = tuple(range(7))  # MONTHLY alone means "on DTSTART's day"
        try:
            return self.rule.replace(**changes)
        except ValueError as exc:
            raise ScheduleError(f"RRULE never occurs from {start:%H:%M}: {exc}") from exc

    def _times_of_day(self, start: datetime) -> tuple[tuple[int, ...], ...]:
        """Return the (hours, minutes, seconds) a sub-daily rule anchored at `start` hits daily."""
        step = self.interval if self.freq == MINUTELY else self.interval * 60
        if step < 60:
            hours = self.byhour or tuple(range(24))
            minutes = tuple(range(start.minute % step, 60, step))
        else:
            hours = tuple(range(start.hour % (step // 60), 24, step // 60))
            minutes = self.byminute if self.freq == HOURLY and self.byminute else (start.minute,)
        hours = tuple(hour for hour in hours if self.byhour is None or hour in self.byhour)
        minutes = tuple(
            minute for minute in minutes if self.byminute is None or minute in self.byminute
        )
        seconds = self.bysecond or (start.second,)
        if not hours or not minutes:
            raise ScheduleError(
                f"RRULE BYHOUR/BYMINUTE values are never reached with INTERVAL={self.interval} "
                f"from {start:%H:%M}"
            )
        if len(hours) * len(minutes) * len(seconds) > _MAX_TIMES_PER_DAY:
            raise ScheduleError(f"RRULE fires more than {_MAX_TIMES_PER_DAY} times a day")
        return hours, minutes, seconds

    def exhausted_message(self, now: datetime) -> str:
        return f"RRULE has no occurrence within {HORIZON_YEARS} years after {now.isoformat()}"


_FIXED_PERIODS = {
    MINUTELY: timedelta(minutes=1),
    HOURLY: timedelta(hours=1),
    DAILY: timedelta(days=1),
    WEEKLY: timedelta(weeks=1),
}


def _fast_forward(start: datetime, freq: int, interval: int, target: datetime) -> datetime:
    """Move an uncounted rule's start forward by whole periods to just before `target`.

    Whole INTERVALs keep the phase and every default dateutil derives from the start (time of
    day, weekday, day of month), so the occurrences after `target` are unchanged.
    """
    if start >= target:
        return start
    if freq in _FIXED_PERIODS:
        period = _FIXED_PERIODS[freq] * interval
        periods = (target - start) // period - 1
        return start + period * periods if periods > 0 else start
    step = 12 * interval if freq == YEARLY else interval
    elapsed = (target.year - start.year) * 12 + target.month - start.month
    for periods in range(elapsed // step - 1, max(elapsed // step - 10, 0), -1):
        months = start.month - 1 + periods * step
        try:
            return start.replace(year=start.year + months // 12, month=months % 12 + 1)
        except ValueError:
            continue  # that month lacks the start's day (29-31): try one period earlier
    return start


@functools.lru_cache(maxsize=1024)
def _calendar_shift(first_year: int, last_year: int) -> int:
    """Return the largest year offset moving `first_year..last_year` to an identical calendar.

    Identical means the same leap years and weekdays, and the result stays below the ceiling.
    dateutil searches for the next match until year 9999, which for a rule that never matches is
    thousands of years of work. Evaluating in a calendar-identical window just below that year
    bounds the search to a few decades past the horizon. A multiple of 400 years is a whole
    number of weeks, so an answer exists within 400 candidates.
    """

    def same_calendar(shift: int) -> bool:
        return all(
            _year_kind(year) == _year_kind(year + shift)
            for year in range(first_year, last_year + 1)
        )

    top = _SHIFT_CEILING_YEAR - last_year
    return next(shift for shift in range(top, -1, -1) if same_calendar(shift))


def _year_kind(year: int) -> tuple[bool, int]:
    return calendar.isleap(year), date(year, 1, 1).weekday()


def _shift_years(moment: datetime, years: int) -> datetime:
    return moment.replace(year=moment.year + years) if years else moment


# --- cron ----------------------------------------------------------------------------------------

_CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
        start=1,
    )
}
_DAY_NAMES = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))
}


@dataclass(frozen=True)
class _CronField:
    name: str
    low: int
    high: int
    names: dict[str, int]


_CRON_FIELDS = (
    _CronField("minute", 0, 59, {}),
    _CronField("hour", 0, 23, {}),
    _CronField("day-of-month", 1, 31, {}),
    _CronField("month", 1, 12, _MONTH_NAMES),
    _CronField("day-of-week", 0, 7, _DAY_NAMES),
)
_CRON_ITEM = re.compile(
    r"(?:(?P<star>\*)|(?P<first>[0-9A-Za-z]+)(?:-(?P<last>[0-9A-Za-z]+))?)(?:/(?P<step>[0-9]+))?"
)


def _parse_cron(expr: str, tz: ZoneInfo) -> _Cron:
    normalized = _normalize_cron(expr)
    try:
        prototype = croniter(
            normalized,
            datetime(2000, 1, 1),
            ret_type=datetime,
            day_or=True,  # Vixie: day-of-month OR day-of-week when both are restricted
            max_years_between_matches=HORIZON_YEARS + 1,
        )
    except CroniterError as exc:
        raise ScheduleError(f"invalid cron expression {expr!r}: {exc}") from exc
    return _Cron(tz=tz, expr=expr, prototype=prototype)


def _normalize_cron(expr: str) -> str:
    """Check standard 5-field cron syntax and return it in plain numeric form for croniter."""
    text = " ".join(expr.split())
    if text.startswith("@"):
        alias = text.lower()
        if alias == "@reboot":
            raise ScheduleError("cron @reboot is not supported: a task needs a time schedule")
        if alias not in _CRON_ALIASES:
            raise ScheduleError(
                f"unknown cron alias {text!r}; expected one of {', '.join(_CRON_ALIASES)}"
            )
        return _CRON_ALIASES[alias]
    fields = text.split(" ")
    if len(fields) != len(_CRON_FIELDS):
        raise ScheduleError(
            "cron expression must have exactly 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    return " ".join(
        _normalize_cron_field(value, field)
        for value, field in zip(fields, _CRON_FIELDS, strict=True)
    )


def _normalize_cron_field(text: str, field: _CronField) -> str:
    items = []
    for item in text.split(","):
        match = _CRON_ITEM.fullmatch(item)
        if match is None:
            raise ScheduleError(f"cron field {field.name!r} has unsupported syntax: {item!r}")
        step = match["step"]
        if step is not None and not 1 <= int(step) <= field.high - field.low + 1:
            raise ScheduleError(f"cron field {field.name!r} step out of range: {step}")
        suffix = f"/{int(step)}" if step else ""
        if match["star"]:
            items.append(f"*{suffix}")
            continue
        first = _cron_value(match["first"], field)
        last = _cron_value(match["last"], field) if match["last"] else None
        if last is None and step:
            last = field.high  # "5/15" means "5-59/15", as in cronie
        if field.name == "day-of-week" and last == 0 and first > 0:
            last = 7  # "FRI-SUN": Sunday closes the week as 7
        if last is not None and last < first:
            raise ScheduleError(f"cron field {field.name!r} range is reversed: {item!r}")
        # croniter reads a written "5-5" as the whole field, so a one-value range is one value.
        items.append(str(first) if last in (None, first) else f"{first}-{last}{suffix}")
    return ",".join(items)


def _cron_value(token: str, field: _CronField) -> int:
    if token.isdigit():
        value = int(token)
    elif token.upper() in field.names:
        value = field.names[token.upper()]
    else:
        raise ScheduleError(f"cron field {field.name!r} has unknown value {token!r}")
    if not field.low <= value <= field.high:
        raise ScheduleError(f"cron field {field.name!r} out of range: {value}")
    return value


# --- rrule ---------------------------------------------------------------------------------------

_FREQUENCIES = {
    "YEARLY": YEARLY,
    "MONTHLY": MONTHLY,
    "WEEKLY": WEEKLY,
    "DAILY": DAILY,
    "HOURLY": HOURLY,
    "MINUTELY": MINUTELY,
}
_WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
# name: (smallest, largest, whether negative values count from the end)
_RRULE_NUMBER_LISTS = {
    "BYSECOND": (0, 59, False),
    "BYMINUTE": (0, 59, False),
    "BYHOUR": (0, 23, False),
    "BYMONTH": (1, 12, False),
    "BYMONTHDAY": (1, 31, True),
    "BYYEARDAY": (1, 366, True),
    "BYWEEKNO": (1, 53, True),
    "BYSETPOS": (1, 366, True),
}
_RRULE_PARTS = {"FREQ", "INTERVAL", "COUNT", "UNTIL", "WKST", "BYDAY", *_RRULE_NUMBER_LISTS}
_DAY_SELECTOR_PARTS = {"BYMONTHDAY", "BYYEARDAY", "BYDAY"}
_DAY_FILTER_PARTS = {"BYMONTH", *_DAY_SELECTOR_PARTS}
_FILTER_PARTS = {"BYHOUR", "BYMINUTE", *_DAY_FILTER_PARTS}
_ICAL_DATETIME = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(Z?)")
_BYDAY_ITEM = re.compile(r"([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)")
_UNSIGNED = re.compile(r"\d{1,7}")
_SIGNED = re.compile(r"[+-]?\d{1,7}")


def _parse_rrule(expr: str, timezone: str, tz: ZoneInfo) -> _RRule:
    """Parse an RRULE block; DTSTART, RDATE and EXDATE wall times are in the task timezone.

    A TZID parameter must name the task's own timezone (anything else is rejected, never
    converted); a value ending in Z is an instant; a floating value is a wall time in the task
    timezone. UNTIL likewise: with Z an instant, without it a wall time in the task timezone.
    DTSTART is an occurrence only if the rule matches it (dateutil's reading of RFC 5545).
    """
    rule_text, dtstart, rdates, exdates = _read_rrule_lines(expr, timezone, tz)
    parts = _rrule_parts(rule_text)
    freq = _FREQUENCIES[parts["FREQ"]]
    until = None
    if "UNTIL" in parts:
        wall, is_utc = _parse_ical_datetime(parts["UNTIL"], "RRULE UNTIL")
        until = wall.replace(tzinfo=UTC) if is_utc else _wall_to_utc(wall, tz)
    byhour = _number_list(parts, "BYHOUR")
    byminute = _number_list(parts, "BYMINUTE")
    # Without DTSTART the rule is re-anchored on every call; parse it against a start that any
    # valid BYHOUR/BYMINUTE can reach so dateutil checks everything else now.
    placeholder = datetime(
        2000,
        1,
        3,
        min(byhour or (0,)) if freq == HOURLY else 0,
        min(byminute or (0,)) if freq == MINUTELY else 0,
    )
    text = ";".join(f"{name}={value}" for name, value in parts.items() if name != "UNTIL")
    try:
        rule = rrulestr(text, dtstart=dtstart or placeholder)
    except ValueError as exc:
        raise ScheduleError(f"invalid RRULE {rule_text!r}: {exc}") from exc
    return _RRule(
        tz=tz,
        rule=rule,
        freq=freq,
        interval=int(parts.get("INTERVAL", "1")),
        count=int(parts["COUNT"]) if "COUNT" in parts else None,
        wkst=_WEEKDAYS.index(parts.get("WKST", "MO")),
        byhour=byhour,
        byminute=byminute,
        bysecond=_number_list(parts, "BYSECOND"),
        has_bysetpos="BYSETPOS" in parts,
        has_filter=bool(_FILTER_PARTS & parts.keys()),
        has_day_filter=bool(_DAY_FILTER_PARTS & parts.keys()),
        has_day_selector=bool(_DAY_SELECTOR_PARTS & parts.keys()),
        dtstart=dtstart,
        until=until,
        rdates=tuple(sorted(rdates)),
        exdates=frozenset(exdates),
    )


def _read_rrule_lines(
    expr: str, timezone: str, tz: ZoneInfo
) -> tuple[str, datetime | None, list[datetime], list[datetime]]:
    """Split an RRULE block into (rule text, DTSTART wall time, RDATE and EXDATE instants)."""
    rule_text = None
    dtstart = None
    rdates: list[datetime] = []
    exdates: list[datetime] = []
    for line in _content_lines(expr):
        name, params, value = _split_content_line(line)
        if name == "RRULE":
            if params:
                raise ScheduleError(f"RRULE parameters are not supported: {';'.join(params)}")
            if rule_text is not None:
                raise ScheduleError("only one RRULE line is supported")
            rule_text = value
        elif name == "DTSTART":
            if dtstart is not None:
                raise ScheduleError("DTSTART is given twice")
            [(wall, is_utc)] = _parse_date_values(value, params, timezone, "DTSTART")
            dtstart = _utc_to_wall(wall, tz) if is_utc else wall
        elif name in ("RDATE", "EXDATE"):
            target = rdates if name == "RDATE" else exdates
            for wall, is_utc in _parse_date_values(value, params, timezone, name):
                target.append(wall.replace(tzinfo=UTC) if is_utc else _wall_to_utc(wall, tz))
        elif name == "EXRULE":
            raise ScheduleError("EXRULE is deprecated by RFC 5545 and not supported; use EXDATE")
        else:
            raise ScheduleError(
                f"unsupported line {name!r}; expected DTSTART, RRULE, RDATE or EXDATE"
            )
    if rule_text is None:
        raise ScheduleError("RRULE line is missing (expected e.g. FREQ=DAILY;BYHOUR=9)")
    return rule_text, dtstart, rdates, exdates


def _utc_to_wall(moment: datetime, tz: ZoneInfo) -> datetime:
    return moment.replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None)


def _content_lines(expr: str) -> list[str]:
    # RFC 5545 folds long lines with CRLF + space; no property here contains whitespace, so the
    # remaining whitespace separates lines.
    return re.sub(r"\r?\n[ \t]", "", expr).split()


def _split_content_line(line: str) -> tuple[str, list[str], str]:
    """Split ``NAME;PARAM=..:VALUE`` into its parts; a line without ':' is a bare RRULE value."""
    if ":" not in line:
        return "RRULE", [], line
    head, _, value = line.partition(":")
    name, *params = head.split(";")
    return name.upper(), params, value


def _parse_date_values(
    value: str, params: list[str], timezone: str, what: str
) -> list[tuple[datetime, bool]]:
    has_tzid = False
    for param in params:
        key, _, param_value = param.partition("=")
        key = key.upper()
        if key == "TZID":
            tzid = param_value.strip('"')
            if tzid != timezone:
                raise ScheduleError(
                    f"{what} TZID {tzid!r} does not match the task timezone {timezone!r}"
                )
            has_tzid = True
        elif key == "VALUE" and param_value.upper() == "DATE-TIME":
            continue
        else:
            raise ScheduleError(f"{what} parameter {param!r} is not supported")
    values = [_parse_ical_datetime(item, what) for item in value.split(",")]
    if has_tzid and any(is_utc for _, is_utc in values):
        raise ScheduleError(f"{what} cannot combine TZID with a UTC (Z) time")
    if what == "DTSTART" and len(values) != 1:
        raise ScheduleError("DTSTART must have exactly one value")
    return values


def _parse_ical_datetime(text: str, what: str) -> tuple[datetime, bool]:
    """Parse ``YYYYMMDDTHHMMSS[Z]`` into (naive datetime, whether it is UTC)."""
    match = _ICAL_DATETIME.fullmatch(text.upper())
    if match is None:
        raise ScheduleError(
            f"{what} must be a date-time like 19970902T090000 or 19970902T090000Z, got {text!r}"
        )
    try:
        moment = datetime(*(int(group) for group in match.groups()[:6]))
    except ValueError as exc:
        raise ScheduleError(f"{what} is not a valid date-time: {text!r}") from exc
    _check_year(moment, what)
    return moment, bool(match[7])


def _rrule_parts(text: str) -> dict[str, str]:
    """Split and check RRULE parts beyond what dateutil enforces (RFC 5545 section 3.3.10)."""
    parts: dict[str, str] = {}
    for item in text.upper().split(";"):
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ScheduleError(f"RRULE part {item!r} must look like NAME=VALUE")
        if name not in _RRULE_PARTS:
            raise ScheduleError(f"unknown RRULE part {name!r}")
        if name in parts:
            raise ScheduleError(f"RRULE part {name} is given twice")
        parts[name] = value
    if "FREQ" not in parts:
        raise ScheduleError("RRULE FREQ is required")
    if parts["FREQ"] == "SECONDLY":
        raise ScheduleError("RRULE FREQ=SECONDLY is not supported; the smallest is MINUTELY")
    if parts["FREQ"] not in _FREQUENCIES:
        raise ScheduleError(f"RRULE FREQ must be one of {', '.join(_FREQUENCIES)}")
    freq = _FREQUENCIES[parts["FREQ"]]
    interval = _bounded_int(parts, "INTERVAL", _MAX_INTERVAL)
    _bounded_int(parts, "COUNT", _MAX_COUNT)
    if "COUNT" in parts and "UNTIL" in parts:
        raise ScheduleError("RRULE COUNT and UNTIL must not both be given (RFC 5545)")
    if parts.get("WKST", "MO") not in _WEEKDAYS:
        raise ScheduleError(f"RRULE WKST must be one of {', '.join(_WEEKDAYS)}")
    for name in _RRULE_NUMBER_LISTS:
        _number_list(parts, name)
    has_ordinal_day = _check_byday(parts)
    _check_frequency_rules(parts, freq, interval or 1, has_ordinal_day)
    return parts


def _bounded_int(parts: dict[str, str], name: str, largest: int) -> int | None:
    if name not in parts:
        return None
    raw = parts[name]
    if not _UNSIGNED.fullmatch(raw) or not 1 <= int(raw) <= largest:
        raise ScheduleError(f"RRULE {name} must be between 1 and {largest}, got {raw}")
    return int(raw)


def _number_list(parts: dict[str, str], name: str) -> tuple[int, ...] | None:
    if name not in parts:
        return None
    low, high, signed = _RRULE_NUMBER_LISTS[name]
    values = []
    for raw in parts[name].split(","):
        if not (_SIGNED if signed else _UNSIGNED).fullmatch(raw):
            raise ScheduleError(f"RRULE {name} has a non-numeric value: {raw!r}")
        value = int(raw)
        if not low <= (abs(value) if signed else value) <= high:
            allowed = f"{low}..{high} or -{high}..-{low}" if signed else f"{low}..{high}"
            raise ScheduleError(f"RRULE {name} out of range: {value} (allowed {allowed})")
        values.append(value)
    return tuple(values)


def _check_byday(parts: dict[str, str]) -> bool:
    """Check BYDAY; return whether any day has an ordinal such as 1FR or -2MO."""
    if "BYDAY" not in parts:
        return False
    has_ordinal = False
    for raw in parts["BYDAY"].split(","):
        match = _BYDAY_ITEM.fullmatch(raw)
        if match is None:
            raise ScheduleError(
                f"RRULE BYDAY has an invalid day: {raw!r} (expected e.g. MO or 1FR)"
            )
        if match[1] is not None:
            if not 1 <= abs(int(match[1])) <= 53:
                raise ScheduleError(f"RRULE BYDAY ordinal out of range: {raw} (allowed 1..53)")
            has_ordinal = True
    return has_ordinal


def _check_frequency_rules(
    parts: dict[str, str], freq: int, interval: int, has_ordinal_day: bool
) -> None:
    """Reject BYxxx parts RFC 5545 forbids for the frequency, and ones too costly to evaluate."""
    name = parts["FREQ"]
    if "BYWEEKNO" in parts and freq != YEARLY:
        raise ScheduleError(f"RRULE BYWEEKNO is only allowed with FREQ=YEARLY, not {name}")
    if "BYYEARDAY" in parts and freq in (MONTHLY, WEEKLY, DAILY):
        raise ScheduleError(f"RRULE BYYEARDAY is not allowed with FREQ={name}")
    if "BYMONTHDAY" in parts and freq == WEEKLY:
        raise ScheduleError("RRULE BYMONTHDAY is not allowed with FREQ=WEEKLY")
    if has_ordinal_day and freq not in (MONTHLY, YEARLY):
        raise ScheduleError(
            f"RRULE BYDAY ordinals (like 1MO) need FREQ=MONTHLY or YEARLY, not {name}"
        )
    if has_ordinal_day and "BYWEEKNO" in parts:
        raise ScheduleError("RRULE BYDAY ordinals (like 1MO) are not allowed with BYWEEKNO")
    if "BYSETPOS" in parts and not any(
        part.startswith("BY") and part != "BYSETPOS" for part in parts
    ):
        raise ScheduleError("RRULE BYSETPOS needs another BYxxx part to select from")
    if freq in (HOURLY, MINUTELY) and _FILTER_PARTS & parts.keys():
        # Filtered sub-daily rules are evaluated as DAILY rules listing their times of day
        # (_RRule._anchored), which needs the same times every day.
        step = interval if freq == MINUTELY else 60 * interval
        if "BYSETPOS" in parts:
            raise ScheduleError(f"RRULE BYSETPOS needs FREQ=DAILY or longer, not {name}")
        if not (60 % step == 0 if step < 60 else step % 60 == 0 and 24 % (step // 60) == 0):
            raise ScheduleError(
                f"RRULE FREQ={name} with INTERVAL={interval} cannot be combined with BYxxx "
                "filters; use an INTERVAL that divides the hour (MINUTELY) or the day (HOURLY)"
            )


# --- once, event, condition ----------------------------------------------------------------------


def _parse_once(expr: str, tz: ZoneInfo) -> _Once:
    """Parse an ISO 8601 date-time; without an offset it is a wall time in the task timezone.

    A date without a time of day is rejected rather than read as midnight.
    """
    text = expr.strip()
    try:
        date.fromisoformat(text)
    except ValueError:
        pass
    else:
        raise ScheduleError(f"once needs a time of day, e.g. {text}T09:00:00; got only a date")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ScheduleError(
            f"once must be an ISO 8601 date-time such as 2026-12-01T09:00:00+02:00, got {text!r}"
        ) from exc
    _check_year(moment, "once")
    if moment.utcoffset() is None:
        return _Once(tz=tz, instant=_wall_to_utc(moment, tz))
    return _Once(tz=tz, instant=moment.astimezone(UTC))


_EVENT_TOPIC = re.compile(r"[A-Za-z0-9._\-*?:/]+")


def _parse_event(expr: str, tz: ZoneInfo) -> _NoTimes:
    if len(expr) > _MAX_TOPIC_LENGTH:
        raise ScheduleError(f"event topic is longer than {_MAX_TOPIC_LENGTH} characters")
    if not _EVENT_TOPIC.fullmatch(expr):
        raise ScheduleError(f"event topic {expr!r} may only use letters, digits and . _ - * ? : /")
    return _NoTimes(tz=tz)


def _parse_condition(expr: str, tz: ZoneInfo) -> _NoTimes:
    try:
        jmespath.compile(expr)
    except jmespath.exceptions.JMESPathError as exc:
        raise ScheduleError(f"invalid JMESPath condition {expr!r}: {exc}") from exc
    except RecursionError as exc:
        raise ScheduleError("JMESPath condition is nested too deeply") from exc
    return _NoTimes(tz=tz)
