"""The dashboard: growth, the funnel, each step's results, and whether mail flows."""

from __future__ import annotations

from datetime import timedelta

from flask import render_template, request
from sqlalchemy import select

from ... import dashboard
from ...feedback import rates
from ...models import Broadcast
from .. import now, services
from .blueprint import bp
from .clock import owner_zone

CHART_HEIGHT = 200  # px; the chart's width is the page's, its text never scales
NEWSLETTERS_SHOWN = 10  # the latest, in the bounce and complaint rates
SERIES = (
    ("signed_up", "Signed up through your forms"),
    ("imported", "Imported"),
    ("confirmed", "Confirmations"),
    ("unsubscribed", "Unsubscribes"),
)


@bp.app_template_filter("thousands")
def thousands(number: int) -> str:
    """1234567 as 1,234,567: every count on the owner's pages is written so."""
    return f"{number:,}"


def _tick_days(days: list[dashboard.Day]) -> list[int]:
    """Which days carry a label under the chart: every fifth of 30, every fifteenth of 90,
    the first of each month of a year."""
    if len(days) > 120:
        return [i for i, d in enumerate(days) if d.day.day == 1]
    every = 5 if len(days) <= 30 else 15
    return list(range(0, len(days), every))


def _chart(days: list[dashboard.Day]) -> dict:
    """The daily chart for the template's SVG: the lines in a plot that stretches to the
    page's width (a viewBox of one unit a day, scaled freely), the labels at percentages of
    the width in CSS pixels, so that they keep their size on a phone. Labels marked minor
    (all but every second, or every third month of a year) are left out on narrow screens."""
    peak = max([1, *(max(day.counts.values()) for day in days)])
    last = max(1, len(days) - 1)

    def y(value: int) -> float:
        return round(CHART_HEIGHT - value / peak * CHART_HEIGHT, 1)

    lines = [
        {
            "kind": kind,
            "label": label,
            "points": " ".join(f"{i},{y(d.counts[kind])}" for i, d in enumerate(days)),
            "total": sum(d.counts[kind] for d in days),
        }
        for kind, label in SERIES
    ]
    ticked = _tick_days(days)
    keep = 3 if len(ticked) > 9 else 2  # a phone's width holds four dates or so
    ticks = [
        {
            "x": round(100 * i / last, 2),
            "label": days[i].day.strftime("%b %d"),
            "anchor": "start" if i < last * 0.05 else "end" if i > last * 0.95 else "middle",
            "minor": n % keep != 0,
        }
        for n, i in enumerate(ticked)
    ]
    return {
        "span": last,
        "height": CHART_HEIGHT,
        "peak": peak,
        "lines": lines,
        "ticks": ticks,
        "days": days,
    }


@bp.get("/")
def dashboard_page():
    """Growth, the funnel, each step's results, and whether mail is flowing."""
    settings = services().settings
    # Which sequence the funnel and the step tables show (?sequence=NAME; the default).
    sequence = services().sequences.get(
        request.args.get("sequence", ""), services().default_sequence
    )
    period = request.args.get("days", type=int)
    if period not in dashboard.PERIODS:
        period = 90
    with services().database.read() as db:
        days = dashboard.daily_counts(db, now=now(), zone=owner_zone(), days=period)
        funnel = dashboard.funnel(db, sequence=sequence.name)
        steps = dashboard.step_results(db, sequence)
        outbox = dashboard.outbox_health(
            db, now=now(), late_after=timedelta(seconds=settings.SCHEDULER_LATE_SECONDS)
        )
        links = dashboard.link_clicks(db)
        magnet_funnels = dashboard.magnet_funnels(db, services().magnets)
        week = rates.recent(db, now=now(), days=7)
        month = rates.recent(db, now=now(), days=30)
        recent_newsletters = db.scalars(
            select(Broadcast.id)
            .where(Broadcast.started_at.is_not(None))
            .order_by(Broadcast.id.desc())
            .limit(NEWSLETTERS_SHOWN)
        ).all()
        newsletters = rates.per_newsletter(db, list(recent_newsletters))
        order = {step.id: n for n, step in enumerate(sequence.steps)}
        step_rates = sorted(
            rates.per_step(db, sequence=sequence.name),
            key=lambda r: order.get(r.label, len(order)),
        )
        international = rates.international_refused(db, now=now())
    return render_template(
        "admin/dashboard.html",
        week=week,
        month=month,
        newsletters=newsletters,
        step_rates=step_rates,
        international=international,
        chart=_chart(days),
        funnel=funnel,
        magnet_funnels=magnet_funnels,
        steps=steps,
        sequence=sequence,
        sequences=services().sequences,
        outbox=outbox,
        links=links,
        periods=dashboard.PERIODS,
    )
