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

CHART_WIDTH, CHART_HEIGHT = 720, 200
NEWSLETTERS_SHOWN = 10  # the latest, in the bounce and complaint rates
SERIES = (
    ("signed_up", "Signups"),
    ("confirmed", "Confirmations"),
    ("unsubscribed", "Unsubscribes"),
)


def _chart(days: list[dashboard.Day]) -> dict:
    """Coordinates for the daily chart, drawn as inline SVG by the template."""
    peak = max([1, *(max(day.counts.values()) for day in days)])
    step = CHART_WIDTH / max(1, len(days) - 1)

    def y(value: int) -> float:
        return round(CHART_HEIGHT - value / peak * CHART_HEIGHT, 1)

    lines = [
        {
            "kind": kind,
            "label": label,
            "points": " ".join(
                f"{round(i * step, 1)},{y(d.counts[kind])}" for i, d in enumerate(days)
            ),
            "total": sum(d.counts[kind] for d in days),
        }
        for kind, label in SERIES
    ]
    ticks = [
        {"x": round(i * step, 1), "label": days[i].day.strftime("%b %d")}
        for i in range(0, len(days), 15)
    ]
    return {
        "width": CHART_WIDTH,
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
    with services().database.read() as db:
        days = dashboard.daily_counts(db, now=now())
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
    )
