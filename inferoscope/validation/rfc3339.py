"""Strict RFC 3339 date-time, as the manifest's ``created_at`` requires (contract §2)."""

from __future__ import annotations

import calendar
import re
from datetime import date, timedelta

_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)

#: UTC dates whose last minute had a 61st second (every leap second so far).
_LEAP_DAYS = """
1972-06-30 1972-12-31 1973-12-31 1974-12-31 1975-12-31 1976-12-31 1977-12-31 1978-12-31
1979-12-31 1981-06-30 1982-06-30 1983-06-30 1985-06-30 1987-12-31 1989-12-31 1990-12-31
1992-06-30 1993-06-30 1994-06-30 1995-12-31 1997-06-30 1998-12-31 2005-12-31 2008-12-31
2012-06-30 2015-06-30 2016-12-31
"""
LEAP_SECOND_DATES = frozenset(date.fromisoformat(day) for day in _LEAP_DAYS.split())


def is_rfc3339_date_time(value: object) -> bool:
    """True when ``value`` is a string in RFC 3339 ``date-time`` form with a real date."""
    if not isinstance(value, str):
        return True  # format applies to strings only; the type keyword judges the rest
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return False
    if hour > 23 or minute > 59 or second > 60:
        return False
    offset = match.group(8)
    offset_minutes = 0
    if offset not in ("Z", "z"):
        off_h, off_m = int(offset[1:3]), int(offset[4:6])
        if off_h > 23 or off_m > 59:
            return False
        offset_minutes = (off_h * 60 + off_m) * (1 if offset[0] == "+" else -1)
    if second == 60:
        return _is_real_leap_second(year, month, day, hour, minute, offset_minutes)
    return True


def _is_real_leap_second(year: int, month: int, day: int, hour: int, minute: int, offset: int) -> bool:
    total = hour * 60 + minute - offset
    utc_day = date(year, month, day) + timedelta(days=total // 1440)
    return total % 1440 == 23 * 60 + 59 and utc_day in LEAP_SECOND_DATES
