"""How the admin shows a tick: in the entry's zone, and how far from the cluster clock."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from celery_dcron.contrib.django.live import relative, when
from celery_dcron.schedules import datetime_to_ms


@pytest.mark.parametrize(
    ("delta_ms", "text"),
    [
        (0, "now"),
        (400, "now"),
        (1_000, "in 1 s"),
        (-12_000, "12 s ago"),
        (59_000, "in 59 s"),
        (180_000, "in 3 min"),
        (-179_000, "3 min ago"),
        (3_600_000, "in 1 h"),
        (2 * 3_600_000 + 5 * 60_000, "in 2 h 5 min"),
        (86_400_000, "in 1 day"),
        (-3 * 86_400_000, "3 days ago"),
    ],
)
def test_relative(delta_ms: int, text: str) -> None:
    assert relative(delta_ms) == text


def test_when_is_in_the_entry_s_zone_with_its_abbreviation_across_dst() -> None:
    winter = datetime_to_ms(datetime(2026, 12, 4, 13, 5, tzinfo=timezone.utc))
    summer = datetime_to_ms(datetime(2026, 7, 4, 12, 5, tzinfo=timezone.utc))
    now = winter - 180_000
    assert when(winter, "Europe/Paris", now) == "2026-12-04 14:05:00 CET (in 3 min)"
    assert when(summer, "Europe/Paris", summer + 5_000) == "2026-07-04 14:05:00 CEST (5 s ago)"
    assert when(winter, "UTC", winter) == "2026-12-04 13:05:00 UTC (now)"
