"""The read API against its own OpenAPI document, with schemathesis generating the requests."""

from __future__ import annotations

import json
import re
import urllib.request
from html import escape

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.openapi import SPEC
from pulsestack_cli.local import LocalStack
from tests.api_fleet import Fleet

schema = schemathesis.openapi.from_dict(SPEC)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_keeps_its_contract(case: schemathesis.Case, stack: LocalStack, api_fleet: Fleet) -> None:
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{stack.api_port}",
        headers={"Authorization": f"Bearer {stack.api_token}"},
        # "to after from" and "at most N points" are rules OpenAPI 3.0 cannot state; the API answers them
        # with a documented 400, which this check would count as rejecting valid input.
        excluded_checks=[positive_data_acceptance],
    )


@pytest.mark.parametrize("path", ["/openapi.json", "/v1/openapi.json"])
def test_served_document_is_the_one_tested(stack: LocalStack, path: str) -> None:
    # Where clients look for it, and where earlier clients found it; no token needed.
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.api_port}{path}") as response:
        assert json.loads(response.read()) == json.loads(json.dumps(SPEC))


def test_the_page_for_people_lists_every_operation_and_needs_nothing_else(stack: LocalStack) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.api_port}/docs") as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        html = response.read().decode()
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            assert f"<code>{method.upper()} {escape(path)}</code>" in html
            assert escape(operation["summary"]) in html
            for parameter in operation.get("parameters", []):
                assert f"<code>{parameter['name']}</code>" in html
    # Nothing to fetch: no script, no stylesheet or image from elsewhere.
    assert not re.search(r"<script|<link|src=|@import|https?://", html), html
