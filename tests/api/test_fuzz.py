"""schemathesis fuzzes a live gunicorn with the OpenAPI document.

A bounded, derandomized run per operation: no answer is a 5xx, and every
answer's status, headers, content type and body conform to the document.
The document is loaded from project.openapi (tests/api/test_contract.py
checks the site serves exactly it): schemathesis' fixture loader reads an
attribute pytest 9 no longer has.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from project.openapi import build_document

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

EXAMPLES_PER_OPERATION = 40


schema = schemathesis.openapi.from_dict(build_document())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_conforms_to_the_document_and_none_is_a_5xx(case, live_web):
    base, web = live_web

    # A schema-valid password may still be refused with a documented 400:
    # Django's validators (common, numeric, like the address) are no schema.
    response = case.call_and_validate(
        base_url=base, timeout=10, excluded_checks=[positive_data_acceptance]
    )

    assert response.status_code < 500, web.log()[-2000:]
