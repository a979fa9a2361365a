"""Links in emails reach the routes that answer them, each with its own kind of token."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from service.tokens import Purpose
from tests.helpers import services_of


@pytest.mark.parametrize(
    "kind,endpoint,purpose",
    [
        ("confirm", "public.confirm_page", Purpose.CONFIRM),
        ("download", "public.download", Purpose.DOWNLOAD),
        ("unsubscribe", "public.unsubscribe_page", Purpose.UNSUBSCRIBE),
    ],
)
def test_each_link_routes_to_its_page_with_a_token_for_it(app, clock, kind, endpoint, purpose):
    services = services_of(app)
    url = getattr(services.links, kind)(42, now=clock())
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "http://newsletter.test"
    adapter = app.url_map.bind("newsletter.test")
    matched, arguments = adapter.match(parts.path, method="GET")
    assert matched == endpoint
    assert services.tokens.read(purpose, arguments["token"], now=clock()).subscriber_id == 42
