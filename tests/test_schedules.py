"""Schedule maths: cron, RFC 5545 rrules, one-shots, events and conditions.

Pure tests: no database, no Django. Expected instants are written by hand in UTC from the zone
rules (Europe/Chisinau: +02:00, +03:00 from 2026-03-29 00:00Z to 2026-10-25 00:00Z;
America/New_York: EST -05:00, EDT -04:00), never computed by the code under test.
"""

import itertools
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.schedules import (
    HORIZON_YEARS,
    KINDS,
    MAX_OCCURRENCES,
    ScheduleError,
    next_occurrences,
    validate,
    with_dtstart,
)

CHISINAU = "Europe/Chisinau"
NEW_YORK = "America/New_York"


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


def edt(year: int, month: int, day: int, hour: int = 9, minute: int = 0) -> datetime:
    """A New York wall time during daylight saving time (UTC-4), as a UTC instant."""
    return utc(year, month, day, hour, minute) + timedelta(hours=4)


def est(year: int, month: int, day: int, hour: int = 9, minute: int = 0) -> datetime:
    """A New York wall time during standard time (UTC-5), as a UTC instant."""
    return utc(year, month, day, hour, minute) + timedelta(hours=5)


def days(first: datetime, last: datetime) -> list[datetime]:
    """Every instant from `first` to `last` inclusive, one day apart (both in one UTC offset)."""
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def in_utc(found: list[datetime]) -> list[datetime]:
    # A datetime in a repeated (fall-back) hour never compares equal to one in another zone
    # (PEP 495), so instants are compared in UTC.
    return [moment.astimezone(UTC) for moment in found]


def cron(expr: str, after: datetime, n: int = 3, tz: str = "UTC") -> list[datetime]:
    return in_utc(next_occurrences("cron", expr, tz, after, n))


def rrule(expr: str, after: datetime, n: int = 3, tz: str = "UTC") -> list[datetime]:
    return in_utc(next_occurrences("rrule", expr, tz, after, n))


# -- DST policy: cron -------------------------------------------------------------------------


def test_spring_forward_gap_fires_once_after_gap() -> None:
    # 02:30 does not exist on 2026-03-29 in Chisinau: it fires at 03:00 local, 00:00Z.
    assert cron("30 2 * * *", utc(2026, 3, 27, 12), tz=CHISINAU) == [
        utc(2026, 3, 28, 0, 30),
        utc(2026, 3, 29, 0, 0),
        utc(2026, 3, 29, 23, 30),
    ]


def test_fall_back_overlap_fires_once_at_first_instant() -> None:
    # 02:30 happens twice on 2026-10-25 in Chisinau (23:30Z and 00:30Z); only the first fires.
    assert cron("30 2 * * *", utc(2026, 10, 23, 12), tz=CHISINAU) == [
        utc(2026, 10, 23, 23, 30),
        utc(2026, 10, 24, 23, 30),
        utc(2026, 10, 26, 0, 30),
    ]


def test_every_15_minutes_cron_collapses_spring_gap_into_one_firing() -> None:
    # 02:00, 02:15, 02:30 and 02:45 do not exist; with 03:00 they all fire once at 00:00Z.
    assert cron("*/15 * * * *", utc(2026, 3, 28, 23, 30), n=4, tz=CHISINAU) == [
        utc(2026, 3, 28, 23, 45),
        utc(2026, 3, 29, 0, 0),
        utc(2026, 3, 29, 0, 15),
        utc(2026, 3, 29, 0, 30),
    ]


def test_every_15_minutes_cron_fires_repeated_hour_once() -> None:
    assert cron("*/15 * * * *", utc(2026, 10, 24, 22, 30), n=7, tz=CHISINAU) == [
        utc(2026, 10, 24, 22, 45),  # 01:45 EEST
        utc(2026, 10, 24, 23, 0),  # 02:00 EEST, first pass
        utc(2026, 10, 24, 23, 15),
        utc(2026, 10, 24, 23, 30),
        utc(2026, 10, 24, 23, 45),
        utc(2026, 10, 25, 1, 0),  # 03:00 EET; the second 02:xx pass is skipped
        utc(2026, 10, 25, 1, 15),
    ]


def test_new_york_cron_spring_gap_fires_at_three() -> None:
    assert cron("30 2 * * *", utc(2026, 3, 7), tz=NEW_YORK) == [
        est(2026, 3, 7, 2, 30),
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT
        edt(2026, 3, 9, 2, 30),
    ]


def test_new_york_cron_fall_back_fires_first_one_thirty() -> None:
    assert cron("30 1 * * *", utc(2026, 10, 31), tz=NEW_YORK) == [
        edt(2026, 10, 31, 1, 30),
        edt(2026, 11, 1, 1, 30),
        est(2026, 11, 2, 1, 30),
    ]


def test_new_york_15_minute_cron_across_spring_forward() -> None:
    assert cron("*/15 * * * *", est(2026, 3, 8, 1, 30), tz=NEW_YORK) == [
        est(2026, 3, 8, 1, 45),
        utc(2026, 3, 8, 7, 0),
        edt(2026, 3, 8, 3, 15),
    ]


def test_new_york_15_minute_cron_across_fall_back() -> None:
    assert cron("*/15 * * * *", edt(2026, 11, 1, 1, 30), tz=NEW_YORK) == [
        edt(2026, 11, 1, 1, 45),
        est(2026, 11, 1, 2, 0),
        est(2026, 11, 1, 2, 15),
    ]


def test_after_inside_repeated_hour_returns_only_later_instants() -> None:
    # 01:20 EST is in the second pass of 01:xx; 01:30 and 01:45 already fired (as EDT).
    assert cron("*/15 * * * *", est(2026, 11, 1, 1, 20), n=2, tz=NEW_YORK) == [
        est(2026, 11, 1, 2, 0),
        est(2026, 11, 1, 2, 15),
    ]


def test_after_with_fold_is_read_as_its_instant() -> None:
    second_pass = datetime(2026, 11, 1, 1, 20, fold=1, tzinfo=ZoneInfo(NEW_YORK))
    assert cron("*/15 * * * *", second_pass, n=1, tz=NEW_YORK) == [est(2026, 11, 1, 2, 0)]


def test_results_are_expressed_in_the_task_timezone() -> None:
    [first] = next_occurrences("cron", "30 8 * * *", CHISINAU, utc(2026, 6, 1), 1)
    assert first.tzinfo is ZoneInfo(CHISINAU)
    assert (first.hour, first.minute, first.utcoffset()) == (8, 30, timedelta(hours=3))


# -- DST policy: rrule ------------------------------------------------------------------------


def test_rrule_spring_forward_gap_fires_once_after_gap() -> None:
    assert rrule("FREQ=DAILY;BYHOUR=2;BYMINUTE=30", utc(2026, 3, 27, 12), tz=CHISINAU) == [
        utc(2026, 3, 28, 0, 30),
        utc(2026, 3, 29, 0, 0),
        utc(2026, 3, 29, 23, 30),
    ]


def test_rrule_fall_back_overlap_fires_once_at_first_instant() -> None:
    assert rrule("FREQ=DAILY;BYHOUR=2;BYMINUTE=30", utc(2026, 10, 23, 12), tz=CHISINAU) == [
        utc(2026, 10, 23, 23, 30),
        utc(2026, 10, 24, 23, 30),
        utc(2026, 10, 26, 0, 30),
    ]


def test_rrule_every_15_minutes_collapses_spring_gap_into_one_firing() -> None:
    assert rrule("FREQ=MINUTELY;INTERVAL=15", utc(2026, 3, 28, 23, 30), n=4, tz=CHISINAU) == [
        utc(2026, 3, 28, 23, 45),
        utc(2026, 3, 29, 0, 0),
        utc(2026, 3, 29, 0, 15),
        utc(2026, 3, 29, 0, 30),
    ]


def test_rrule_every_15_minutes_fires_repeated_hour_once() -> None:
    assert rrule("FREQ=MINUTELY;INTERVAL=15", utc(2026, 10, 24, 22, 30), n=7, tz=CHISINAU) == [
        utc(2026, 10, 24, 22, 45),
        utc(2026, 10, 24, 23, 0),
        utc(2026, 10, 24, 23, 15),
        utc(2026, 10, 24, 23, 30),
        utc(2026, 10, 24, 23, 45),
        utc(2026, 10, 25, 1, 0),
        utc(2026, 10, 25, 1, 15),
    ]


def test_rrule_filtered_15_minutes_across_new_york_spring_forward() -> None:
    # BYDAY makes this a filtered sub-daily rule, evaluated through its daily times.
    expr = "FREQ=MINUTELY;INTERVAL=15;BYDAY=SU"
    assert rrule(expr, est(2026, 3, 8, 1, 30), tz=NEW_YORK) == [
        est(2026, 3, 8, 1, 45),
        utc(2026, 3, 8, 7, 0),
        edt(2026, 3, 8, 3, 15),
    ]


def test_rrule_hourly_after_inside_repeated_hour_returns_only_later_instants() -> None:
    expr = "DTSTART;TZID=America/New_York:20261101T000000\nRRULE:FREQ=HOURLY"
    assert rrule(expr, est(2026, 11, 1, 1, 0), n=2, tz=NEW_YORK) == [
        est(2026, 11, 1, 2, 0),
        est(2026, 11, 1, 3, 0),
    ]


def test_new_york_rrule_spring_gap_and_fall_overlap() -> None:
    assert rrule("FREQ=DAILY;BYHOUR=2;BYMINUTE=30", utc(2026, 3, 7), tz=NEW_YORK) == [
        est(2026, 3, 7, 2, 30),
        utc(2026, 3, 8, 7, 0),
        edt(2026, 3, 9, 2, 30),
    ]
    assert rrule("FREQ=DAILY;BYHOUR=1;BYMINUTE=30", utc(2026, 10, 31), tz=NEW_YORK) == [
        edt(2026, 10, 31, 1, 30),
        edt(2026, 11, 1, 1, 30),
        est(2026, 11, 2, 1, 30),
    ]


MORNING_BRIEFING = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30"


def test_morning_briefing_moves_an_hour_earlier_in_utc_after_spring_forward() -> None:
    assert rrule(MORNING_BRIEFING, utc(2026, 3, 26, 12), tz=CHISINAU) == [
        utc(2026, 3, 27, 6, 30),  # Friday, EET
        utc(2026, 3, 30, 5, 30),  # Monday, EEST
        utc(2026, 3, 31, 5, 30),
    ]


def test_morning_briefing_moves_back_in_utc_after_fall_back() -> None:
    assert rrule(MORNING_BRIEFING, utc(2026, 10, 22, 12), tz=CHISINAU) == [
        utc(2026, 10, 23, 5, 30),  # Friday, EEST
        utc(2026, 10, 26, 6, 30),  # Monday, EET
        utc(2026, 10, 27, 6, 30),
    ]


# -- RFC 5545 section 3.8.5.3 examples ---------------------------------------------------------

RFC_AFTER = utc(1997, 1, 1)
RFC_EXAMPLES = [
    pytest.param(
        "19970902T090000",
        "FREQ=DAILY;COUNT=10",
        days(edt(1997, 9, 2), edt(1997, 9, 11)),
        id="daily_for_10_occurrences",
    ),
    pytest.param(
        "19970902T090000",
        "FREQ=DAILY;UNTIL=19971224T000000Z",
        days(edt(1997, 9, 2), edt(1997, 10, 25)) + days(est(1997, 10, 26), est(1997, 12, 23)),
        id="daily_until_december_24",
    ),
    pytest.param(
        "19970902T090000",
        "FREQ=DAILY;INTERVAL=2",
        days(edt(1997, 9, 2), edt(1997, 10, 25))[::2] + [est(1997, 10, d) for d in (26, 28, 30)],
        id="every_other_day",
    ),
    pytest.param(
        "19970902T090000",
        "FREQ=DAILY;INTERVAL=10;COUNT=5",
        [edt(1997, 9, 2), edt(1997, 9, 12), edt(1997, 9, 22), edt(1997, 10, 2), edt(1997, 10, 12)],
        id="every_10_days_5_occurrences",
    ),
    pytest.param(
        "19980101T090000",
        "FREQ=YEARLY;UNTIL=20000131T140000Z;BYMONTH=1;BYDAY=SU,MO,TU,WE,TH,FR,SA",
        [d for year in (1998, 1999, 2000) for d in days(est(year, 1, 1), est(year, 1, 31))],
        id="every_day_in_january_for_3_years",
    ),
    pytest.param(
        "19970902T090000",
        "FREQ=WEEKLY;COUNT=10",
        [edt(1997, 9, d) for d in (2, 9, 16, 23, 30)]
        + [edt(1997, 10, d) for d in (7, 14, 21)]
        + [est(1997, 10, 28), est(1997, 11, 4)],
        id="weekly_for_10_occurrences",
    ),
    pytest.param(
        "19970901T090000",
        "FREQ=WEEKLY;INTERVAL=2;UNTIL=19971224T000000Z;WKST=SU;BYDAY=MO,WE,FR",
        [edt(1997, 9, d) for d in (1, 3, 5, 15, 17, 19, 29)]
        + [edt(1997, 10, d) for d in (1, 3, 13, 15, 17)]
        + [est(1997, 10, d) for d in (27, 29, 31)]
        + [est(1997, 11, d) for d in (10, 12, 14, 24, 26, 28)]
        + [est(1997, 12, d) for d in (8, 10, 12, 22)],
        id="every_other_week_mo_we_fr_until_december_24",
    ),
    pytest.param(
        "19970902T090000",
        "FREQ=WEEKLY;INTERVAL=2;COUNT=8;WKST=SU;BYDAY=TU,TH",
        [edt(1997, 9, d) for d in (2, 4, 16, 18, 30)] + [edt(1997, 10, d) for d in (2, 14, 16)],
        id="every_other_week_tu_th_for_8",
    ),
    pytest.param(
        "19970905T090000",
        "FREQ=MONTHLY;COUNT=10;BYDAY=1FR",
        [
            edt(1997, 9, 5),
            edt(1997, 10, 3),
            est(1997, 11, 7),
            est(1997, 12, 5),
            est(1998, 1, 2),
            est(1998, 2, 6),
            est(1998, 3, 6),
            est(1998, 4, 3),
            edt(1998, 5, 1),
            edt(1998, 6, 5),
        ],
        id="monthly_on_first_friday",
    ),
    pytest.param(
        "19970907T090000",
        "FREQ=MONTHLY;INTERVAL=2;COUNT=10;BYDAY=1SU,-1SU",
        [
            edt(1997, 9, 7),
            edt(1997, 9, 28),
            est(1997, 11, 2),
            est(1997, 11, 30),
            est(1998, 1, 4),
            est(1998, 1, 25),
            est(1998, 3, 1),
            est(1998, 3, 29),
            edt(1998, 5, 3),
            edt(1998, 5, 31),
        ],
        id="every_other_month_first_and_last_sunday",
    ),
    pytest.param(
        "19970922T090000",
        "FREQ=MONTHLY;COUNT=6;BYDAY=-2MO",
        [
            edt(1997, 9, 22),
            edt(1997, 10, 20),
            est(1997, 11, 17),
            est(1997, 12, 22),
            est(1998, 1, 19),
            est(1998, 2, 16),
        ],
        id="monthly_on_second_to_last_monday",
    ),
    pytest.param(
        "19970928T090000",
        "FREQ=MONTHLY;BYMONTHDAY=-3",
        [
            edt(1997, 9, 28),
            est(1997, 10, 29),
            est(1997, 11, 28),
            est(1997, 12, 29),
            est(1998, 1, 29),
            est(1998, 2, 26),
        ],
        id="monthly_on_third_to_last_day",
    ),
    pytest.param(
        "19970930T090000",
        "FREQ=MONTHLY;COUNT=10;BYMONTHDAY=1,-1",
        [
            edt(1997, 9, 30),
            edt(1997, 10, 1),
            est(1997, 10, 31),
            est(1997, 11, 1),
            est(1997, 11, 30),
            est(1997, 12, 1),
            est(1997, 12, 31),
            est(1998, 1, 1),
            est(1998, 1, 31),
            est(1998, 2, 1),
        ],
        id="monthly_on_first_and_last_day",
    ),
    pytest.param(
        "19970910T090000",
        "FREQ=MONTHLY;INTERVAL=18;COUNT=10;BYMONTHDAY=10,11,12,13,14,15",
        days(edt(1997, 9, 10), edt(1997, 9, 15)) + days(est(1999, 3, 10), est(1999, 3, 13)),
        id="every_18_months_on_10th_to_15th",
    ),
    pytest.param(
        "19970902T090000",
        "FREQ=MONTHLY;INTERVAL=2;BYDAY=TU",
        [edt(1997, 9, d) for d in (2, 9, 16, 23, 30)]
        + [est(1997, 11, d) for d in (4, 11, 18, 25)]
        + [est(1998, 1, d) for d in (6, 13, 20, 27)]
        + [est(1998, 3, d) for d in (3, 10, 17, 24, 31)],
        id="every_tuesday_every_other_month",
    ),
    pytest.param(
        "19970610T090000",
        "FREQ=YEARLY;COUNT=10;BYMONTH=6,7",
        [edt(year, month, 10) for year in range(1997, 2002) for month in (6, 7)],
        id="yearly_in_june_and_july",
    ),
    pytest.param(
        "19970310T090000",
        "FREQ=YEARLY;INTERVAL=2;COUNT=10;BYMONTH=1,2,3",
        [est(1997, 3, 10)] + [est(y, m, 10) for y in (1999, 2001, 2003) for m in (1, 2, 3)],
        id="every_other_year_in_january_february_march",
    ),
    pytest.param(
        "19970101T090000",
        "FREQ=YEARLY;INTERVAL=3;COUNT=10;BYYEARDAY=1,100,200",
        [
            est(1997, 1, 1),
            edt(1997, 4, 10),
            edt(1997, 7, 19),
            est(2000, 1, 1),
            edt(2000, 4, 9),
            edt(2000, 7, 18),
            est(2003, 1, 1),
            edt(2003, 4, 10),
            edt(2003, 7, 19),
            est(2006, 1, 1),
        ],
        id="every_third_year_on_days_1_100_200",
    ),
    pytest.param(
        "19970519T090000",
        "FREQ=YEARLY;BYDAY=20MO",
        [edt(1997, 5, 19), edt(1998, 5, 18), edt(1999, 5, 17)],
        id="every_20th_monday_of_the_year",
    ),
    pytest.param(
        "19970512T090000",
        "FREQ=YEARLY;BYWEEKNO=20;BYDAY=MO",
        [edt(1997, 5, 12), edt(1998, 5, 11), edt(1999, 5, 17)],
        id="monday_of_week_20",
    ),
    pytest.param(
        "19970313T090000",
        "FREQ=YEARLY;BYMONTH=3;BYDAY=TH",
        [est(1997, 3, d) for d in (13, 20, 27)]
        + [est(1998, 3, d) for d in (5, 12, 19, 26)]
        + [est(1999, 3, d) for d in (4, 11, 18, 25)],
        id="every_thursday_in_march",
    ),
    pytest.param(
        "19970913T090000",
        "FREQ=MONTHLY;BYDAY=SA;BYMONTHDAY=7,8,9,10,11,12,13",
        [
            edt(1997, 9, 13),
            edt(1997, 10, 11),
            est(1997, 11, 8),
            est(1997, 12, 13),
            est(1998, 1, 10),
            est(1998, 2, 7),
            est(1998, 3, 7),
            edt(1998, 4, 11),
            edt(1998, 5, 9),
            edt(1998, 6, 13),
        ],
        id="first_saturday_after_first_sunday",
    ),
    pytest.param(
        "19961105T090000",
        "FREQ=YEARLY;INTERVAL=4;BYMONTH=11;BYDAY=TU;BYMONTHDAY=2,3,4,5,6,7,8",
        [est(1996, 11, 5), est(2000, 11, 7), est(2004, 11, 2)],
        id="us_presidential_election_day",
    ),
    pytest.param(
        "19970904T090000",
        "FREQ=MONTHLY;COUNT=3;BYDAY=TU,WE,TH;BYSETPOS=3",
        [edt(1997, 9, 4), edt(1997, 10, 7), est(1997, 11, 6)],
        id="third_tuesday_wednesday_or_thursday_bysetpos",
    ),
    pytest.param(
        "19970929T090000",
        "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-2",
        [
            edt(1997, 9, 29),
            est(1997, 10, 30),
            est(1997, 11, 27),
            est(1997, 12, 30),
            est(1998, 1, 29),
            est(1998, 2, 26),
            est(1998, 3, 30),
        ],
        id="second_to_last_weekday_of_the_month",
    ),
    pytest.param(
        "19970902T090000",
        # The RFC also lists 15:00, but UNTIL=17:00Z is 13:00 EDT: the rule wins.
        "FREQ=HOURLY;INTERVAL=3;UNTIL=19970902T170000Z",
        [edt(1997, 9, 2, 9), edt(1997, 9, 2, 12)],
        id="every_3_hours_until_the_rules_own_until",
    ),
    pytest.param(
        "19970902T090000",
        "FREQ=MINUTELY;INTERVAL=15;COUNT=6",
        [edt(1997, 9, 2, h, m) for h, m in ((9, 0), (9, 15), (9, 30), (9, 45), (10, 0), (10, 15))],
        id="every_15_minutes_for_6_occurrences",
    ),
    pytest.param(
        "19970902T090000",
        "FREQ=MINUTELY;INTERVAL=90;COUNT=4",
        [edt(1997, 9, 2, 9), edt(1997, 9, 2, 10, 30), edt(1997, 9, 2, 12), edt(1997, 9, 2, 13, 30)],
        id="every_hour_and_a_half_for_4_occurrences",
    ),
    pytest.param(
        "19970805T090000",
        "FREQ=WEEKLY;INTERVAL=2;COUNT=4;BYDAY=TU,SU;WKST=MO",
        [edt(1997, 8, d) for d in (5, 10, 19, 24)],
        id="wkst_monday",
    ),
    pytest.param(
        "19970805T090000",
        "FREQ=WEEKLY;INTERVAL=2;COUNT=4;BYDAY=TU,SU;WKST=SU",
        [edt(1997, 8, d) for d in (5, 17, 19, 31)],
        id="wkst_sunday",
    ),
    pytest.param(
        "20070115T090000",
        "FREQ=MONTHLY;BYMONTHDAY=15,30;COUNT=5",
        [est(2007, 1, 15), est(2007, 1, 30), est(2007, 2, 15), edt(2007, 3, 15), edt(2007, 3, 30)],
        id="february_30_is_ignored",
    ),
]


@pytest.mark.parametrize(("dtstart", "rule", "expected"), RFC_EXAMPLES)
def test_rfc_5545_example(dtstart: str, rule: str, expected: list[datetime]) -> None:
    expr = f"DTSTART;TZID=America/New_York:{dtstart}\nRRULE:{rule}"
    day_before = datetime.strptime(dtstart[:8], "%Y%m%d").replace(tzinfo=UTC) - timedelta(days=1)
    found = rrule(expr, day_before, n=len(expected) + 1, tz=NEW_YORK)
    assert found[: len(expected)] == expected


@pytest.mark.parametrize(
    ("rule", "expected_count"),
    [
        ("FREQ=DAILY;COUNT=10", 10),
        ("FREQ=MINUTELY;INTERVAL=15;COUNT=6", 6),
        ("FREQ=DAILY;UNTIL=19971224T000000Z", 113),
        ("FREQ=HOURLY;INTERVAL=3;UNTIL=19970902T170000Z", 2),
    ],
)
def test_rfc_count_and_until_end_the_series(rule: str, expected_count: int) -> None:
    expr = f"DTSTART;TZID=America/New_York:19970902T090000\nRRULE:{rule}"
    assert len(rrule(expr, RFC_AFTER, n=200, tz=NEW_YORK)) == expected_count


def test_rfc_every_20_minutes_from_9_to_16_40_daily_and_minutely_agree() -> None:
    expected = [edt(1997, 9, 2, h, m) for h in range(9, 17) for m in (0, 20, 40)]
    expected.append(edt(1997, 9, 3, 9, 0))
    for rule in (
        "FREQ=DAILY;BYHOUR=9,10,11,12,13,14,15,16;BYMINUTE=0,20,40",
        "FREQ=MINUTELY;INTERVAL=20;BYHOUR=9,10,11,12,13,14,15,16",
    ):
        expr = f"DTSTART;TZID=America/New_York:19970902T090000\nRRULE:{rule}"
        assert rrule(expr, RFC_AFTER, n=25, tz=NEW_YORK) == expected


def test_rfc_every_friday_the_13th_with_exdate_of_dtstart() -> None:
    expr = (
        "DTSTART;TZID=America/New_York:19970902T090000\n"
        "EXDATE;TZID=America/New_York:19970902T090000\n"
        "RRULE:FREQ=MONTHLY;BYDAY=FR;BYMONTHDAY=13"
    )
    assert rrule(expr, RFC_AFTER, n=5, tz=NEW_YORK) == [
        est(1998, 2, 13),
        est(1998, 3, 13),
        est(1998, 11, 13),
        edt(1999, 8, 13),
        edt(2000, 10, 13),
    ]


# -- rrule features ---------------------------------------------------------------------------


def test_rrule_without_dtstart_is_anchored_at_after_with_seconds_zeroed() -> None:
    assert rrule("FREQ=DAILY;BYHOUR=8;BYMINUTE=30", utc(2026, 1, 1, 9, 0, 42), n=2) == [
        utc(2026, 1, 2, 8, 30),
        utc(2026, 1, 3, 8, 30),
    ]
    assert rrule("FREQ=HOURLY", utc(2026, 1, 1, 9, 17, 42), n=2) == [
        utc(2026, 1, 1, 10, 17),
        utc(2026, 1, 1, 11, 17),
    ]


def test_rrule_accepts_rrule_prefix_and_lowercase() -> None:
    assert rrule("RRULE:freq=daily;byhour=6;byminute=0", utc(2026, 1, 1), n=1) == [
        utc(2026, 1, 1, 6)
    ]


def test_dtstart_in_utc_is_read_as_an_instant() -> None:
    expr = "DTSTART:20260105T063000Z\nRRULE:FREQ=DAILY;COUNT=2"
    assert rrule(expr, utc(2026, 1, 1), tz=CHISINAU) == [
        utc(2026, 1, 5, 6, 30),
        utc(2026, 1, 6, 6, 30),
    ]


def test_floating_dtstart_is_wall_time_in_task_timezone() -> None:
    expr = "DTSTART:20260105T083000\nRRULE:FREQ=DAILY;COUNT=2"
    assert rrule(expr, utc(2026, 1, 1), tz=CHISINAU) == [
        utc(2026, 1, 5, 6, 30),
        utc(2026, 1, 6, 6, 30),
    ]


def test_dtstart_tzid_must_be_the_task_timezone() -> None:
    expr = "DTSTART;TZID=America/New_York:20260105T090000\nRRULE:FREQ=DAILY"
    with pytest.raises(ScheduleError, match="does not match the task timezone 'Europe/Chisinau'"):
        next_occurrences("rrule", expr, CHISINAU, utc(2026, 1, 1), 1)


def test_count_without_dtstart_counts_from_after() -> None:
    # Documented consequence of anchoring at `after`; with_dtstart is what makes COUNT durable.
    assert rrule("FREQ=DAILY;COUNT=2;BYHOUR=9;BYMINUTE=0", utc(2026, 1, 1), n=5) == [
        utc(2026, 1, 1, 9),
        utc(2026, 1, 2, 9),
    ]
    assert rrule("FREQ=DAILY;COUNT=2;BYHOUR=9;BYMINUTE=0", utc(2026, 1, 2, 10), n=5) == [
        utc(2026, 1, 3, 9),
        utc(2026, 1, 4, 9),
    ]


def test_dtstart_far_in_the_past_keeps_interval_phase() -> None:
    expr = "DTSTART;TZID=UTC:20000103T090000\nRRULE:FREQ=WEEKLY;INTERVAL=3"
    # 2000-01-03 is a Monday; 2026-01-05 is 1357 weeks later (a multiple of 3 plus 1).
    assert rrule(expr, utc(2026, 1, 1), n=2) == [utc(2026, 1, 19, 9), utc(2026, 2, 9, 9)]


def test_until_in_utc_is_compared_as_an_instant() -> None:
    # UNTIL 06:15Z is 01:15 EST, in the repeated hour: by wall clock 01:30 is later, but the
    # 01:30 EDT run (05:30Z) happens before UNTIL and must fire.
    expr = "DTSTART;TZID=America/New_York:20261031T013000\nRRULE:FREQ=DAILY;UNTIL=20261101T061500Z"
    assert rrule(expr, utc(2026, 10, 1), n=5, tz=NEW_YORK) == [
        edt(2026, 10, 31, 1, 30),
        edt(2026, 11, 1, 1, 30),
    ]


def test_exhausted_until_returns_nothing() -> None:
    assert rrule("FREQ=DAILY;UNTIL=20250101T000000Z", utc(2026, 1, 1)) == []


def test_exhausted_count_returns_nothing() -> None:
    expr = "DTSTART;TZID=UTC:20260101T090000\nRRULE:FREQ=DAILY;COUNT=3"
    assert rrule(expr, utc(2026, 1, 3, 9)) == []


def test_leap_day_rrule_skips_2100() -> None:
    assert rrule("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29", utc(2096, 3, 1), n=2) == [
        utc(2104, 2, 29),
        utc(2108, 2, 29),
    ]


def test_leap_day_rrule_fires_every_four_years() -> None:
    assert rrule("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29", utc(2026, 1, 1), n=2) == [
        utc(2028, 2, 29),
        utc(2032, 2, 29),
    ]


@pytest.mark.parametrize("kind", ["cron", "rrule"])
def test_the_horizon_bounds_each_wait_not_the_whole_search(kind: str) -> None:
    # 2036 lies more than ten years after `after`, but only four after 2032.
    expr = "0 0 29 2 *" if kind == "cron" else "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29"
    found = in_utc(next_occurrences(kind, expr, "UTC", utc(2026, 1, 1), 3))
    assert found == [utc(2028, 2, 29), utc(2032, 2, 29), utc(2036, 2, 29)]


def test_many_leap_days_span_several_search_windows() -> None:
    # Anchored at `after`, 02:00 in Chisinau (+02:00), so each firing is 00:00Z.
    found = rrule("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29", utc(2026, 1, 1), n=30, tz=CHISINAU)
    assert found[0] == utc(2028, 2, 29)
    assert found[-1] == utc(2148, 2, 29)
    assert [moment.year for moment in found] == [y for y in range(2028, 2149, 4) if y != 2100]


def test_a_wait_longer_than_the_horizon_ends_the_search() -> None:
    # Leap days that fall on a Monday: 2044, then 2072; 28 years apart, past the horizon.
    expr = "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO"
    assert rrule(expr, utc(2043, 1, 1), n=3) == [utc(2044, 2, 29)]
    assert rrule(expr, utc(2071, 1, 1), n=1) == [utc(2072, 2, 29)]


def test_a_rule_without_dtstart_keeps_its_interval_phase_across_windows() -> None:
    # Anchored at 2028: every other year from 2028, so only leap years that are 2028 + 4k match;
    # a later window anchored afresh would fall on odd years and find nothing.
    expr = "FREQ=YEARLY;INTERVAL=2;BYMONTH=2;BYMONTHDAY=29"
    assert [moment.year for moment in rrule(expr, utc(2028, 1, 1), n=5)] == [
        2028,
        2032,
        2036,
        2040,
        2044,
    ]


def test_bymonthday_31_skips_short_months() -> None:
    assert rrule("FREQ=MONTHLY;BYMONTHDAY=31", utc(2026, 1, 1), n=4) == [
        utc(2026, 1, 31),
        utc(2026, 3, 31),
        utc(2026, 5, 31),
        utc(2026, 7, 31),
    ]


def test_bymonthday_minus_1_is_the_last_day_of_each_month() -> None:
    assert rrule("FREQ=MONTHLY;BYMONTHDAY=-1", utc(2028, 1, 1), n=3) == [
        utc(2028, 1, 31),
        utc(2028, 2, 29),
        utc(2028, 3, 31),
    ]


def test_bysetpos_picks_the_last_weekday_of_the_month() -> None:
    expr = "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1;BYHOUR=17;BYMINUTE=0"
    assert rrule(expr, utc(2026, 1, 1)) == [
        utc(2026, 1, 30, 17),
        utc(2026, 2, 27, 17),
        utc(2026, 3, 31, 17),
    ]


def test_rdate_adds_and_exdate_removes_occurrences() -> None:
    expr = (
        "DTSTART;TZID=Europe/Chisinau:20260105T090000\n"
        "RRULE:FREQ=WEEKLY;BYDAY=MO\n"
        "RDATE;TZID=Europe/Chisinau:20260107T120000\n"
        "EXDATE;TZID=Europe/Chisinau:20260112T090000"
    )
    assert rrule(expr, utc(2026, 1, 1), n=4, tz=CHISINAU) == [
        utc(2026, 1, 5, 7),
        utc(2026, 1, 7, 10),
        utc(2026, 1, 19, 7),
        utc(2026, 1, 26, 7),
    ]


def test_exdate_and_rdate_in_utc_match_instants() -> None:
    expr = (
        "DTSTART;TZID=Europe/Chisinau:20260105T090000\n"
        "RRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=3\n"
        "EXDATE:20260112T070000Z\n"
        "RDATE:20260301T000000Z,20260201T000000Z"
    )
    assert rrule(expr, utc(2026, 1, 1), n=5, tz=CHISINAU) == [
        utc(2026, 1, 5, 7),
        utc(2026, 1, 19, 7),
        utc(2026, 2, 1),
        utc(2026, 3, 1),
    ]


def test_filtered_minutely_rule_fires_only_in_its_hours() -> None:
    expr = "FREQ=MINUTELY;INTERVAL=30;BYHOUR=9,17;BYDAY=MO"
    assert rrule(expr, utc(2026, 1, 1), n=5) == [
        utc(2026, 1, 5, 9, 0),
        utc(2026, 1, 5, 9, 30),
        utc(2026, 1, 5, 17, 0),
        utc(2026, 1, 5, 17, 30),
        utc(2026, 1, 12, 9, 0),
    ]


def test_every_day_of_a_month_rule_fires_daily_in_that_month_only() -> None:
    assert rrule("FREQ=DAILY;BYMONTH=2;BYHOUR=7;BYMINUTE=0", utc(2026, 2, 27), n=3) == [
        utc(2026, 2, 27, 7),
        utc(2026, 2, 28, 7),
        utc(2027, 2, 1, 7),
    ]


# -- with_dtstart -------------------------------------------------------------------------------


def test_with_dtstart_prepends_creation_wall_time_without_seconds() -> None:
    expr = with_dtstart(
        "FREQ=DAILY;INTERVAL=2;BYHOUR=9;BYMINUTE=0", CHISINAU, utc(2026, 3, 2, 8, 0, 42)
    )
    assert expr == (
        "DTSTART;TZID=Europe/Chisinau:20260302T100000\n"
        "RRULE:FREQ=DAILY;INTERVAL=2;BYHOUR=9;BYMINUTE=0"
    )


def test_with_dtstart_keeps_interval_2_phase() -> None:
    stored = with_dtstart("FREQ=DAILY;INTERVAL=2;BYHOUR=9;BYMINUTE=0", CHISINAU, utc(2026, 3, 2, 8))
    # Phase from 2026-03-02: the 4th, 6th, 8th... whatever `after` is.
    assert rrule(stored, utc(2026, 3, 5, 10), n=2, tz=CHISINAU) == [
        utc(2026, 3, 6, 7),
        utc(2026, 3, 8, 7),
    ]


def test_rrule_without_dtstart_takes_its_phase_from_after() -> None:
    assert rrule("FREQ=DAILY;INTERVAL=2;BYHOUR=9;BYMINUTE=0", utc(2026, 3, 5, 10), 2, CHISINAU) == [
        utc(2026, 3, 7, 7),
        utc(2026, 3, 9, 7),
    ]


def test_with_dtstart_leaves_an_existing_dtstart_alone() -> None:
    expr = "DTSTART;TZID=UTC:20260101T090000\nRRULE:FREQ=DAILY"
    assert with_dtstart(expr, "UTC", utc(2026, 6, 1)) == expr


def test_with_dtstart_rejects_naive_dtstart() -> None:
    with pytest.raises(ScheduleError, match="timezone-aware"):
        with_dtstart("FREQ=DAILY", "UTC", datetime(2026, 1, 1))


# -- once ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("2026-12-01T09:00:00+02:00", utc(2026, 12, 1, 7)),
        ("2026-12-01T09:00:00Z", utc(2026, 12, 1, 9)),
        ("2026-12-01T09:00", utc(2026, 12, 1, 7)),  # wall time in Chisinau, EET
        ("2026-07-01T09:00", utc(2026, 7, 1, 6)),  # wall time in Chisinau, EEST
        ("2026-03-29T02:30", utc(2026, 3, 29, 0, 0)),  # inside the gap: fires at 03:00 local
        ("2026-10-25T02:30", utc(2026, 10, 24, 23, 30)),  # repeated: the first 02:30
    ],
)
def test_once_fires_at_its_instant(expr: str, expected: datetime) -> None:
    assert in_utc(next_occurrences("once", expr, CHISINAU, utc(2026, 1, 1), 5)) == [expected]


def test_once_at_or_before_after_returns_nothing() -> None:
    assert next_occurrences("once", "2026-12-01T09:00:00Z", "UTC", utc(2026, 12, 1, 9), 1) == []


def test_once_in_the_past_is_invalid() -> None:
    with pytest.raises(ScheduleError, match="not after now"):
        validate("once", "2026-01-01T00:00:00Z", "UTC", utc(2026, 1, 1))


def test_once_date_without_time_is_rejected() -> None:
    with pytest.raises(ScheduleError, match="needs a time of day"):
        validate("once", "2026-12-01", "UTC", utc(2026, 1, 1))


# -- event and condition ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expr"),
    [
        ("event", "calendar.*"),
        ("event", "email.received"),
        ("event", "github:push/main?"),
        ("condition", "length(items) > `3`"),
        ("condition", "status == 'ready' && !paused"),
    ],
)
def test_event_and_condition_validate_and_have_no_time_occurrences(kind: str, expr: str) -> None:
    validate(kind, expr, "UTC", utc(2026, 1, 1))
    assert next_occurrences(kind, expr, "UTC", utc(2026, 1, 1), 5) == []


@pytest.mark.parametrize(
    ("kind", "expr", "message"),
    [
        ("event", "calendar event", "may only use"),
        ("event", "a" * 201, "longer than 200"),
        ("condition", "items[", "invalid JMESPath"),
        ("condition", "(" * 2000 + "a" + ")" * 2000, "JMESPath"),
    ],
)
def test_invalid_event_or_condition_is_rejected(kind: str, expr: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        validate(kind, expr, "UTC", utc(2026, 1, 1))


# -- cron syntax ----------------------------------------------------------------------------------


def test_cron_weekday_names_and_ranges() -> None:
    # 2026-01-02 is a Friday.
    assert cron("0 9 * * MON-FRI", utc(2026, 1, 2, 10)) == [
        utc(2026, 1, 5, 9),
        utc(2026, 1, 6, 9),
        utc(2026, 1, 7, 9),
    ]


def test_cron_month_names_and_lists() -> None:
    assert cron("0 0 1 jan,JUL *", utc(2026, 1, 2), n=2) == [utc(2026, 7, 1), utc(2027, 1, 1)]


def test_cron_steps_within_a_range() -> None:
    assert cron("*/20 9-10 * * *", utc(2026, 1, 1), n=7) == [
        utc(2026, 1, 1, 9, 0),
        utc(2026, 1, 1, 9, 20),
        utc(2026, 1, 1, 9, 40),
        utc(2026, 1, 1, 10, 0),
        utc(2026, 1, 1, 10, 20),
        utc(2026, 1, 1, 10, 40),
        utc(2026, 1, 2, 9, 0),
    ]


def test_cron_start_with_step_runs_to_the_end_of_the_field() -> None:
    assert cron("5/20 8 * * *", utc(2026, 1, 1)) == [
        utc(2026, 1, 1, 8, 5),
        utc(2026, 1, 1, 8, 25),
        utc(2026, 1, 1, 8, 45),
    ]


def test_cron_single_value_range_is_that_value() -> None:
    assert cron("0 5-5 * * *", utc(2026, 1, 1), n=2) == [utc(2026, 1, 1, 5), utc(2026, 1, 2, 5)]


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("@yearly", utc(2027, 1, 1)),
        ("@annually", utc(2027, 1, 1)),
        ("@monthly", utc(2026, 2, 1)),
        ("@weekly", utc(2026, 1, 4)),  # the first Sunday
        ("@daily", utc(2026, 1, 2)),
        ("@midnight", utc(2026, 1, 2)),
        ("@hourly", utc(2026, 1, 1, 1)),
    ],
)
def test_cron_aliases(alias: str, expected: datetime) -> None:
    assert cron(alias, utc(2026, 1, 1, 0, 30), n=1) == [expected]


@pytest.mark.parametrize("sunday", ["0", "7", "SUN"])
def test_cron_sunday_as_0_or_7(sunday: str) -> None:
    assert cron(f"0 12 * * {sunday}", utc(2026, 1, 1), n=2) == [
        utc(2026, 1, 4, 12),
        utc(2026, 1, 11, 12),
    ]


def test_cron_weekday_range_ending_on_sunday() -> None:
    assert cron("0 12 * * FRI-SUN", utc(2026, 1, 1), n=4) == [
        utc(2026, 1, 2, 12),
        utc(2026, 1, 3, 12),
        utc(2026, 1, 4, 12),
        utc(2026, 1, 9, 12),
    ]


def test_cron_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # Vixie cron: the 13th OR any Friday (2026-01-13 is a Tuesday).
    assert cron("0 0 13 * FRI", utc(2026, 1, 1), n=4) == [
        utc(2026, 1, 2),
        utc(2026, 1, 9),
        utc(2026, 1, 13),
        utc(2026, 1, 16),
    ]


def test_cron_leap_day_fires_every_four_years_and_skips_2100() -> None:
    assert cron("0 0 29 2 *", utc(2026, 1, 1), n=2) == [utc(2028, 2, 29), utc(2032, 2, 29)]
    assert cron("0 0 29 2 *", utc(2096, 3, 1), n=2) == [utc(2104, 2, 29), utc(2108, 2, 29)]


def test_cron_collapses_whitespace() -> None:
    assert cron("  0   6 * *\t* ", utc(2026, 1, 1), n=1) == [utc(2026, 1, 1, 6)]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 25 * * *", "cron field 'hour' out of range: 25"),
        ("60 * * * *", "cron field 'minute' out of range: 60"),
        ("0 0 0 * *", "cron field 'day-of-month' out of range: 0"),
        ("0 0 1 13 *", "cron field 'month' out of range: 13"),
        ("0 0 * * 8", "cron field 'day-of-week' out of range: 8"),
        ("0 0 * * FOO", "cron field 'day-of-week' has unknown value 'FOO'"),
        ("0 0 * JAN-MON *", "cron field 'month' has unknown value 'MON'"),
        ("*/0 * * * *", "cron field 'minute' step out of range: 0"),
        ("0 5-1 * * *", "cron field 'hour' range is reversed: '5-1'"),
        ("0 0 L * *", "cron field 'day-of-month' has unknown value 'L'"),
        ("0 0 15W * *", "cron field 'day-of-month' has unknown value '15W'"),
        ("0 0 * * 5#2", "cron field 'day-of-week' has unsupported syntax: '5#2'"),
        ("0 0 ? * *", "cron field 'day-of-month' has unsupported syntax: '?'"),
        ("H * * * *", "cron field 'minute' has unknown value 'H'"),
        ("R 0 * * *", "cron field 'minute' has unknown value 'R'"),
        ("0 0 * * * *", "exactly 5 fields"),
        ("0 0 * * * 2026", "exactly 5 fields"),
        ("* * *", "exactly 5 fields"),
        ("@reboot", "@reboot is not supported"),
        ("@every_5m", "unknown cron alias"),
    ],
)
def test_invalid_cron_names_the_problem(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(message)):
        validate("cron", expr, "UTC", utc(2026, 1, 1))


# -- validation -----------------------------------------------------------------------------------


def test_unknown_kind_lists_the_kinds() -> None:
    with pytest.raises(ScheduleError) as caught:
        validate("x", "* * * * *", "UTC", utc(2026, 1, 1))
    assert str(caught.value) == (
        "unknown schedule kind 'x'; expected one of cron, rrule, once, event, condition"
    )
    assert KINDS == ("cron", "rrule", "once", "event", "condition")


def test_unknown_timezone_is_rejected() -> None:
    with pytest.raises(ScheduleError) as caught:
        validate("cron", "0 9 * * *", "Mars/Olympus", utc(2026, 1, 1))
    assert str(caught.value) == "unknown timezone 'Mars/Olympus'"


@pytest.mark.parametrize("tz", ["America/Argentina/Buenos_Aires", "UTC", CHISINAU, NEW_YORK])
def test_iana_timezones_are_accepted(tz: str) -> None:
    validate("cron", "0 9 * * *", tz, utc(2026, 1, 1))


@pytest.mark.parametrize("tz", ["", "localtime", "right/UTC", "../etc/passwd", "europe/chisinau"])
def test_non_iana_timezone_names_are_rejected(tz: str) -> None:
    with pytest.raises(ScheduleError, match="unknown timezone"):
        validate("cron", "0 9 * * *", tz, utc(2026, 1, 1))


@pytest.mark.parametrize("kind", ["cron", "rrule", "once", "event", "condition"])
@pytest.mark.parametrize("expr", [None, "", "   "])
def test_empty_expression_is_rejected(kind: str, expr: str | None) -> None:
    with pytest.raises(ScheduleError, match="expression is empty"):
        validate(kind, expr, "UTC", utc(2026, 1, 1))


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL must be between 1"),
        ("FREQ=DAILY;INTERVAL=-1", "INTERVAL must be between 1"),
        ("FREQ=MONTHLY;BYMONTHDAY=0", "BYMONTHDAY out of range: 0"),
        ("FREQ=MONTHLY;BYMONTHDAY=32", "BYMONTHDAY out of range: 32"),
        ("FREQ=YEARLY;BYMONTH=13", "BYMONTH out of range: 13"),
        ("FREQ=DAILY;BYHOUR=24", "BYHOUR out of range: 24"),
        ("FREQ=DAILY;BYMINUTE=60", "BYMINUTE out of range: 60"),
        ("FREQ=DAILY;BYSECOND=60", "BYSECOND out of range: 60"),
        ("FREQ=MONTHLY;BYDAY=MO;BYSETPOS=0", "BYSETPOS out of range: 0"),
        ("FREQ=YEARLY;BYYEARDAY=367", "BYYEARDAY out of range: 367"),
        ("FREQ=YEARLY;BYWEEKNO=54", "BYWEEKNO out of range: 54"),
        ("FREQ=WEEKLY;BYDAY=XX", "BYDAY has an invalid day"),
        ("FREQ=MONTHLY;BYDAY=0MO", "BYDAY ordinal out of range"),
        ("FREQ=DAILY;COUNT=3;UNTIL=20270101T000000Z", "COUNT and UNTIL must not both"),
        ("FREQ=DAILY;FOO=1", "unknown RRULE part 'FOO'"),
        ("FREQ=YEARLY;BYEASTER=0", "unknown RRULE part 'BYEASTER'"),
        ("FREQ=DAILY;FREQ=WEEKLY", "given twice"),
        ("BYHOUR=9", "FREQ is required"),
        ("FREQ=FORTNIGHTLY", "FREQ must be one of"),
        ("FREQ=SECONDLY", "SECONDLY is not supported"),
        ("FREQ=DAILY;BYHOUR", "must look like NAME=VALUE"),
        ("FREQ=DAILY;UNTIL=20270101", "UNTIL must be a date-time"),
        ("FREQ=DAILY;WKST=XX", "WKST must be one of"),
        ("FREQ=WEEKLY;BYDAY=1MO", "ordinals"),
        ("FREQ=MONTHLY;BYWEEKNO=1", "BYWEEKNO is only allowed with FREQ=YEARLY"),
        ("FREQ=WEEKLY;BYMONTHDAY=1", "BYMONTHDAY is not allowed with FREQ=WEEKLY"),
        ("FREQ=MONTHLY;BYYEARDAY=1", "BYYEARDAY is not allowed"),
        ("FREQ=MONTHLY;BYSETPOS=1", "BYSETPOS needs another BYxxx"),
        ("FREQ=MINUTELY;INTERVAL=7;BYHOUR=9", "cannot be combined with BYxxx"),
        ("FREQ=HOURLY;BYHOUR=9;BYSETPOS=1", "BYSETPOS needs FREQ=DAILY or longer"),
        ("FREQ=MINUTELY;BYSECOND=0,30;BYDAY=MO", "more than 1440 times a day"),
        ("FREQ=DAILY;COUNT=1001", "COUNT must be between 1 and 1000"),
        ("DTSTART;TZID=America/New_York:20260101T090000\nRRULE:FREQ=DAILY", "does not match"),
        ("DTSTART;VALUE=DATE:20260101\nRRULE:FREQ=DAILY", "not supported"),
        ("DTSTART:20260230T090000\nRRULE:FREQ=DAILY", "not a valid date-time"),
        ("DTSTART:20260101T090000\nDTSTART:20260102T090000\nRRULE:FREQ=DAILY", "twice"),
        ("RRULE:FREQ=DAILY\nRRULE:FREQ=WEEKLY", "only one RRULE"),
        ("EXRULE:FREQ=DAILY\nRRULE:FREQ=WEEKLY", "EXRULE"),
        ("DTSTART:20260101T090000", "RRULE line is missing"),
        ("VEVENT:FOO\nRRULE:FREQ=DAILY", "unsupported line 'VEVENT'"),
    ],
)
def test_invalid_rrule_is_rejected_with_reason(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        validate("rrule", expr, "UTC", utc(2026, 1, 1))


def test_rrule_with_no_future_occurrence_is_invalid() -> None:
    expr = "DTSTART;TZID=UTC:20200101T090000\nRRULE:FREQ=DAILY;COUNT=3"
    with pytest.raises(ScheduleError, match="no occurrence within 10 years"):
        validate("rrule", expr, "UTC", utc(2026, 1, 1))


@pytest.mark.parametrize(
    "expr",
    [
        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=DAILY;INTERVAL=2;BYMONTH=4;BYMONTHDAY=31",
        "FREQ=MINUTELY;BYHOUR=23;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=HOURLY;BYMONTH=11;BYMONTHDAY=31",
        "FREQ=YEARLY;BYWEEKNO=1;BYMONTH=6",
    ],
)
def test_impossible_rrule_is_rejected_within_the_horizon(expr: str) -> None:
    # dateutil alone would look for a match until the year 9999; the bounded search must stop.
    with pytest.raises(ScheduleError, match=f"no occurrence within {HORIZON_YEARS} years"):
        validate("rrule", expr, "UTC", utc(2026, 1, 1))
    assert rrule(expr, utc(2093, 1, 1)) == []


def test_impossible_cron_is_rejected_within_the_horizon() -> None:
    with pytest.raises(ScheduleError, match="'0 0 30 2 \\*' has no occurrence"):
        validate("cron", "0 0 30 2 *", "UTC", utc(2026, 1, 1))
    assert cron("0 0 31 4 *", utc(2026, 1, 1)) == []


def test_rare_rrule_within_the_horizon_is_valid() -> None:
    validate("rrule", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29", "UTC", utc(2097, 1, 1))
    validate("cron", "0 0 29 2 *", "UTC", utc(2097, 1, 1))


@pytest.mark.parametrize(
    "expr", ["2026-13-01T09:00", "tomorrow at nine", "2026-12-01T25:00", "12/01/2026 09:00"]
)
def test_malformed_once_is_rejected(expr: str) -> None:
    with pytest.raises(ScheduleError, match="ISO 8601"):
        validate("once", expr, "UTC", utc(2026, 1, 1))


def test_naive_after_is_rejected() -> None:
    with pytest.raises(ScheduleError, match="timezone-aware"):
        next_occurrences("cron", "* * * * *", "UTC", datetime(2026, 1, 1), 1)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ScheduleError, match="timezone-aware"):
        validate("cron", "* * * * *", "UTC", datetime(2026, 1, 1))


@pytest.mark.parametrize("n", [-1, MAX_OCCURRENCES + 1])
def test_n_outside_the_allowed_range_is_a_programming_error(n: int) -> None:
    with pytest.raises(ValueError, match="n must be an integer"):
        next_occurrences("cron", "* * * * *", "UTC", utc(2026, 1, 1), n)


def test_n_zero_returns_nothing() -> None:
    assert next_occurrences("cron", "* * * * *", "UTC", utc(2026, 1, 1), 0) == []


def test_schedule_error_is_a_value_error() -> None:
    assert issubclass(ScheduleError, ValueError)


# -- properties ---------------------------------------------------------------------------------

ZONES = [
    "UTC",
    CHISINAU,
    NEW_YORK,
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "America/Argentina/Buenos_Aires",
]


def cron_field(low: int, high: int, names: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    value = st.integers(low, high)
    step = st.integers(1, min(12, high - low + 1)).map(lambda s: f"/{s}")
    span = st.tuples(value, value).map(sorted).map(lambda pair: f"{pair[0]}-{pair[1]}")
    item = st.one_of(
        st.just("*"),
        step.map(lambda s: f"*{s}"),
        value.map(str),
        st.tuples(span, st.one_of(st.just(""), step)).map("".join),
        *([st.sampled_from(names)] if names else []),
    )
    return st.lists(item, min_size=1, max_size=3).map(",".join)


CRON_EXPRESSIONS = st.one_of(
    st.tuples(
        cron_field(0, 59),
        cron_field(0, 23),
        cron_field(1, 31),
        cron_field(1, 12, ("JAN", "jun", "DEC")),
        cron_field(0, 7, ("MON", "fri", "SUN")),
    ).map(" ".join),
    st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly", "@yearly"]),
)


# Sub-daily INTERVALs that repeat the same times every day; only these may carry filters.
FITTING_INTERVALS = {"MINUTELY": {1, 5, 15, 30, 60, 120}, "HOURLY": {1, 2, 3}}
# Sub-daily INTERVALs that reach every hour, and every minute; only these may use BYHOUR/BYMINUTE.
EVERY_HOUR = {"MINUTELY": {1, 5, 15, 30, 60}, "HOURLY": {1}}
EVERY_MINUTE = {"MINUTELY": {1}, "HOURLY": {1, 2, 3}}
WEEKDAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]


def some(values: list, max_size: int = 3) -> st.SearchStrategy[str]:
    strategy = st.lists(st.sampled_from(values), min_size=1, max_size=max_size, unique=True)
    return strategy.map(lambda picked: ",".join(map(str, picked)))


@st.composite
def rrule_expressions(draw: st.DrawFn) -> str:
    freq = draw(st.sampled_from(["MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY"]))
    intervals = {"MINUTELY": [1, 5, 15, 30, 60, 120, 7, 90], "HOURLY": [1, 2, 3, 5]}
    interval = draw(st.sampled_from(intervals.get(freq, [1, 2, 3])))
    parts = [f"FREQ={freq}", f"INTERVAL={interval}"]
    fits = interval in FITTING_INTERVALS.get(freq, {interval})
    if fits and draw(st.booleans()):
        parts.append("BYMONTH=" + draw(some(list(range(1, 13)), max_size=4)))
    if fits and freq != "WEEKLY" and draw(st.booleans()):
        parts.append("BYMONTHDAY=" + draw(some([1, 2, 13, 15, 28, 29, 30, 31, -1, -2])))
    byday = fits and draw(st.booleans())
    if byday:
        weekdays = draw(some(WEEKDAYS, max_size=4)).split(",")
        if freq in ("MONTHLY", "YEARLY") and draw(st.booleans()):
            weekdays = [draw(st.sampled_from(["1", "2", "-1"])) + day for day in weekdays]
        parts.append("BYDAY=" + ",".join(weekdays))
    if fits and interval in EVERY_HOUR.get(freq, {interval}) and draw(st.booleans()):
        parts.append("BYHOUR=" + draw(some(list(range(24)))))
    if fits and interval in EVERY_MINUTE.get(freq, {interval}) and draw(st.booleans()):
        parts.append("BYMINUTE=" + draw(some([0, 15, 30, 45, 59], max_size=2)))
    if byday and freq in ("MONTHLY", "YEARLY") and draw(st.booleans()):
        parts.append("BYSETPOS=" + draw(st.sampled_from(["1", "-1", "2"])))
    dtstart = draw(st.one_of(st.none(), st.datetimes(datetime(2019, 1, 1), datetime(2034, 12, 31))))
    ending = draw(st.sampled_from(["", "COUNT", "UNTIL"]))
    if ending == "COUNT" and dtstart is not None:  # COUNT without DTSTART restarts every call
        parts.append(f"COUNT={draw(st.integers(1, 15))}")
    elif ending == "UNTIL":
        until = draw(st.datetimes(datetime(2021, 1, 1), datetime(2040, 1, 1)))
        parts.append(f"UNTIL={until:%Y%m%dT%H%M%S}Z")
    rule = ";".join(parts)
    if dtstart is None:
        return rule
    return f"DTSTART:{dtstart:%Y%m%dT%H%M00}\nRRULE:{rule}"


AFTERS = st.datetimes(datetime(2020, 1, 1), datetime(2035, 12, 31)).map(
    lambda moment: moment.replace(tzinfo=UTC)
)
# Derandomized so CI runs the same 200 examples every time; explore locally with
# derandomize=False and more examples. (The one random counterexample ever seen, to
# test_rrule_occurrences_chain, was an unanchored rule chained across a DST gap: see
# test_unanchored_interval_rule_restarts_its_phase_after_a_dst_gap.)
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, database=None, derandomize=True)


def assert_well_formed(found: list[datetime], tz: str, after: datetime, n: int) -> None:
    instants = in_utc(found)
    assert len(found) <= n
    assert all(moment.tzinfo is ZoneInfo(tz) for moment in found)
    assert all(instant > after for instant in instants)
    assert all(a < b for a, b in itertools.pairwise(instants))


@PROPERTY_SETTINGS
@given(CRON_EXPRESSIONS, st.sampled_from(ZONES), AFTERS, st.integers(1, 6), st.booleans())
def test_cron_occurrences_are_increasing_later_and_stable(
    expr: str, tz: str, after: datetime, n: int, local_after: bool
) -> None:
    start = after.astimezone(ZoneInfo(tz)) if local_after else after
    found = next_occurrences("cron", expr, tz, start, n)
    assert_well_formed(found, tz, after, n)
    assert in_utc(next_occurrences("cron", expr, tz, start, n)) == in_utc(found)


@PROPERTY_SETTINGS
@given(CRON_EXPRESSIONS, st.sampled_from(ZONES), AFTERS, st.integers(2, 6))
def test_cron_occurrences_chain(expr: str, tz: str, after: datetime, n: int) -> None:
    found = in_utc(next_occurrences("cron", expr, tz, after, n))
    if found:
        assert in_utc(next_occurrences("cron", expr, tz, found[0], len(found) - 1)) == found[1:]


@PROPERTY_SETTINGS
@given(rrule_expressions(), st.sampled_from(ZONES), AFTERS, st.integers(1, 6), st.booleans())
def test_rrule_occurrences_are_increasing_later_and_stable(
    expr: str, tz: str, after: datetime, n: int, local_after: bool
) -> None:
    start = after.astimezone(ZoneInfo(tz)) if local_after else after
    found = next_occurrences("rrule", expr, tz, start, n)
    assert_well_formed(found, tz, after, n)
    assert in_utc(next_occurrences("rrule", expr, tz, start, n)) == in_utc(found)


@PROPERTY_SETTINGS
@given(rrule_expressions(), st.sampled_from(ZONES), AFTERS, st.integers(2, 6))
def test_rrule_occurrences_chain(expr: str, tz: str, after: datetime, n: int) -> None:
    # Anchored as task creation stores it: a rule without DTSTART restarts its INTERVAL
    # phase at every `after` (documented), so it cannot chain across a DST gap.
    if "DTSTART" not in expr:
        expr = with_dtstart(expr, tz, after)
    found = in_utc(next_occurrences("rrule", expr, tz, after, n))
    if found:
        assert in_utc(next_occurrences("rrule", expr, tz, found[0], len(found) - 1)) == found[1:]


# -- chaining across a DST gap (the property test's one counterexample) -----------------------

GAP_AFTER = datetime(2025, 3, 29, 23, 53, tzinfo=UTC)  # 01:53 in Chisinau; 02:00-03:00 is skipped


def test_anchored_interval_rule_chains_across_a_dst_gap() -> None:
    expr = with_dtstart("FREQ=MINUTELY;INTERVAL=7", CHISINAU, GAP_AFTER)
    found = next_occurrences("rrule", expr, CHISINAU, GAP_AFTER, 4)
    # Every wall time in the gap fires once, at its end; the lattice goes on after it.
    assert [f"{moment:%H:%M}" for moment in found] == ["03:00", "03:03", "03:10", "03:17"]
    assert next_occurrences("rrule", expr, CHISINAU, found[0], 3) == found[1:]


def test_unanchored_interval_rule_restarts_its_phase_after_a_dst_gap() -> None:
    # Without DTSTART the rule is anchored at `after` on each call (documented), so asking
    # again from its first, gap-shifted instant starts a new 7-minute lattice at 03:00.
    expr = "RRULE:FREQ=MINUTELY;INTERVAL=7"
    found = next_occurrences("rrule", expr, CHISINAU, GAP_AFTER, 3)
    assert [f"{moment:%H:%M}" for moment in found] == ["03:00", "03:03", "03:10"]
    again = next_occurrences("rrule", expr, CHISINAU, found[0], 2)
    assert [f"{moment:%H:%M}" for moment in again] == ["03:07", "03:14"]
