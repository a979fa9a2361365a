"""Bounces and complaints: what comes back after the mail left us, and what it changes.

Every source turns what it hears into Reports and hands them to one outcome function,
`Feedback.record` (service.feedback.outcomes): a provider's webhook
(service.feedback.webhooks, one small module per provider), the bounce mailbox
(service.feedback.mailbox, parsing with service.feedback.reports), and the SMTP server's
own refusal during dispatch. Adding a source is one module that makes Reports.
"""

from __future__ import annotations

from .outcomes import Feedback, FeedbackPolicy, Recorded, Report

__all__ = ["Feedback", "FeedbackPolicy", "Recorded", "Report"]
