"""No request gets a 5xx: the probe's findings one by one, then every route walked from the
URL map with hostile path values, query strings and bodies, anonymous and signed in."""

from __future__ import annotations

import io
import json
import re
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import broadcasts
from service.tokens import Purpose
from tests.helpers import run_pass, services_of, sign_up
from tests.test_admin import create_admin, csrf_token, post, sign_in

TWENTY_FIVE_DIGITS = "9" * 25
PAST_INT4 = str(2**31)  # ids are 32-bit integers on PostgreSQL


@pytest.fixture
def hostile_app(make_app):
    """An app with one of everything (subscriber, email, link, newsletter), its limits
    counted in the shared table (the default) but too high to stop the walk."""
    app = make_app(
        SIGNUP_RATE_LIMIT="10000 per minute",
        ADMIN_LOGIN_RATE_LIMIT="10000 per minute",
        RATELIMIT_STORAGE_URI="",
    )
    create_admin(app)
    client = app.test_client()
    sign_up(client, "reader@example.com", first_name="Ann")
    run_pass(app)
    services = services_of(app)
    with services.database.begin() as session:
        broadcasts.save_draft(
            session, None, subject="Hello", body="[a](https://example.com/)", now=services.clock()
        )
    return app


@pytest.fixture
def owner(hostile_app):
    client = hostile_app.test_client()
    assert sign_in(client).status_code == 303
    return client


def int_routes(app) -> list:
    return [
        rule
        for rule in app.url_map.iter_rules()
        if any(type(c).__name__ == "DatabaseId" for c in rule._converters.values())
    ]


@pytest.mark.slow
def test_the_probes_findings_are_each_a_clear_4xx(hostile_app, owner):
    client = hostile_app.test_client()
    assert client.get(f"/l/{TWENTY_FIVE_DIGITS}/x").status_code == 404
    assert client.get(f"/l/{PAST_INT4}/x").status_code == 404
    assert client.get(f"/l/1/{PAST_INT4}.abc").status_code == 404
    deep = client.post(
        "/api/v1/subscribers", data="[" * 20_000 + "]" * 20_000, content_type="application/json"
    )
    assert deep.status_code == 400 and "error" in deep.get_json()
    surrogate = client.post(
        "/api/v1/subscribers",
        data='{"email": "a@example.com", "first_name": "\\udcff"}',
        content_type="application/json",
    )
    assert surrogate.status_code == 422
    assert "first_name" in surrogate.get_json()["errors"]

    rules = int_routes(hostile_app)
    assert len(rules) >= 14
    for rule in rules:
        for number in (TWENTY_FIVE_DIGITS, PAST_INT4):
            path = re.sub(r"<int:[^>]+>", number, rule.rule)
            path = re.sub(r"<any\(([^,)]+)[^>]*>", r"\1", path).replace("<token>", "x")
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                response = (
                    post(owner, path) if method == "POST" else owner.open(path, method=method)
                )
                assert response.status_code == 404, (method, path)
    assert owner.get(f"/admin/subscribers?before={PAST_INT4}").status_code == 400
    assert post(owner, "/admin/subscribers/import/apply", import_id=PAST_INT4).status_code == 303
    nul = client.post(
        "/admin/login",
        data={"email": "a\x00b", "password": "x", "csrf_token": csrf_token(client)},
    )
    assert nul.status_code == 401

    send = post(owner, "/admin/newsletters/1/send", when="later", send_at="9999-12-31T23:59")
    assert send.status_code == 400
    assert "Pick a date" in send.get_data(as_text=True)
    late = post(owner, "/admin/newsletters/1/send", when="later", send_at="2030-01-01T08:00")
    assert late.status_code == 400 and "within a year" in late.get_data(as_text=True)

    upload = owner.post(
        "/admin/subscribers/import",
        data={
            "csrf_token": csrf_token(owner, "/admin/subscribers/import"),
            "file": (
                io.BytesIO(b"email,signed_up\nz@example.com,9999-12-31T23:59:59-05:00\n"),
                "list.csv",
            ),
        },
        content_type="multipart/form-data",
    )
    assert upload.status_code == 200
    assert "is not a date we can keep" in upload.get_data(as_text=True)


# --- the walk ---------------------------------------------------------------------------

FIELDS = [
    "email",
    "first_name",
    "time_zone",
    "source",
    "website",
    "password",
    "current_password",
    "new_password",
    "confirm_email",
    "consent",
    "mode",
    "join_sequence",
    "subject",
    "body",
    "audience_source",
    "audience_sequence",
    "when",
    "send_at",
    "List-Unsubscribe",
    "import_id",
    "magnet",
    "tags",
    "tag",
    "include_tags",
    "exclude_tags",
    "tags_match",
    "weeks",
    "sequence",
    "wanted",
    "public",
]
QUERY = [
    "q",
    "status",
    "source",
    "from",
    "to",
    "step",
    "before",
    "bom",
    "next",
    "import_id",
    "tag",
    "sequence",
]
PICKED = [
    TWENTY_FIVE_DIGITS,
    "9" * 5000,
    PAST_INT4,
    "a\x00b@example.com",
    "-1",
    "0",
    "1",
    "\u00b2",
    "\u0661",
    "1e9",
    "../../etc/passwd",
    "%00",
    "\x00",
    "'",
    '"',
    "<script>alert(1)</script>",
    "javascript:alert(1)",
    "[x](javascript:alert(1))",
    "9999-12-31T23:59",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31",
    "later",
    "confirmed",
    "\u202eevil",
    "a" * 70_000,
]
TEXT = st.one_of(
    st.sampled_from(PICKED),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
# JSON may carry what a form cannot: lone surrogates, deep nesting, other types.
JSON_VALUE = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.floats(allow_nan=True),
        st.text(st.characters(categories=["Cs"]) | st.characters(), max_size=30),
        st.sampled_from(["\udcff", "Ann\ud800", "\u202eevil"]),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
JSON_BODY = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUE, max_size=5).map(json.dumps),
    st.sampled_from(["[" * 5000 + "]" * 5000, '{"email": "\\udcff@x.example"}', "{", "null"]),
    st.text(max_size=50),
)


def _path(rule, draw, tokens: list[str]) -> str:
    def segment(match: re.Match) -> str:
        converter = match.group(1) or ""
        is_token = match.group(0).endswith(":token>") or match.group(0) == "<token>"
        # Now and then a genuine token of some purpose, to reach past the check.
        if is_token and tokens and draw(st.integers(0, 2)) == 0:
            return draw(st.sampled_from(tokens))
        if converter.startswith("any("):
            choices = converter[4:-1].replace(" ", "").split(",")
            return draw(st.sampled_from([*choices, "x"]))
        if converter == "int":
            # A row that exists (so the view gets past its lookup), or numbers past any id.
            return draw(st.sampled_from(["1", PAST_INT4, TWENTY_FIVE_DIGITS, "9" * 5000]))
        return quote(draw(TEXT), safe="")

    return re.sub(r"<(?:([^:>]+):)?[^>]+>", segment, rule.rule)


@pytest.mark.slow
@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "owner"])
def test_no_request_anywhere_gets_a_server_error(hostile_app, owner, signed_in):
    app = hostile_app
    client = owner if signed_in else app.test_client()
    token = csrf_token(owner, "/admin/account")
    services = services_of(app)
    genuine = [
        services.tokens.make(purpose, 1, now=services.clock(), scope=scope)
        for purpose in Purpose
        for scope in ("", "foam-rolling-planner")
    ]
    # Signing out would end the walk's session; those two are walked anonymously.
    ends_session = {"admin.logout", "admin.sign_out_everywhere"}
    rules = [
        rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not (signed_in and rule.endpoint in ends_session)
    ]

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def walk(data):
        draw = data.draw
        rule = draw(st.sampled_from(rules))
        method = draw(st.sampled_from(sorted(rule.methods - {"HEAD", "OPTIONS"})))
        query = draw(st.dictionaries(st.sampled_from(QUERY), TEXT, max_size=3))
        path = _path(rule, draw, genuine) + ("?" + urlencode(query) if query else "")
        request: dict = {}
        if method == "POST":
            body = draw(st.sampled_from(["form", "json", "file"]))
            if body == "json":
                request = {"data": draw(JSON_BODY), "content_type": "application/json"}
            else:
                form = draw(st.dictionaries(st.sampled_from(FIELDS), TEXT, max_size=6))
                if draw(st.integers(0, 4)):  # mostly past the CSRF check, to reach the view
                    form["csrf_token"] = token
                if body == "file":
                    form["file"] = (io.BytesIO(draw(st.binary(max_size=300))), "list.csv")
                request = {"data": form, "content_type": "multipart/form-data"}
        response = client.open(path, method=method, **request)
        assert response.status_code < 500, (method, path, request, response.get_data()[:300])

    walk()
