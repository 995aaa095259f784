"""Generated requests from the service's own /openapi.json: whatever they hold, no 5xx.

Schemathesis makes, per operation, valid and invalid bodies, paths and query strings, and
sends them to a real `torchdock serve`. A 5xx would be an input that the service did not
turn into a clear 4xx problem.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.system.server import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("schemathesis")
    with ServerProcess(
        env={
            "MODEL_REPOSITORY": str(model_repo),
            "MODELS": '["digits", "minilm"]',
            "DEVICE": "cpu",
            "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"),
            "LOG_LEVEL": "WARNING",
        },
        workers=1,
        log_path=work / "server.log",
    ) as server:
        yield server


def test_no_generated_request_gets_a_server_error(served: ServerProcess) -> None:
    # One test over every operation: schemathesis' own pytest plugin does not load under this
    # pytest, so each operation's hypothesis strategy is driven here.
    schema = schemathesis.openapi.from_url(f"{served.base_url}/openapi.json")
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = 0

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        # Random model names mostly meet 404: two in three cases go to a model served here.
        @given(case=operation.as_strategy(), model=st.sampled_from(["digits", "minilm", None]))
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case: schemathesis.Case, model: str | None) -> None:
            if model is not None and case.path_parameters and "name" in case.path_parameters:
                case.path_parameters["name"] = model
                if "version" in case.path_parameters:
                    case.path_parameters["version"] = "1"
            response = case.call(base_url=served.base_url, timeout=30)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> "
                                f"{response.status_code}: {response.text[:300]}")  # fmt: skip

        check()
    assert operations >= 12, "the schema lists every route"
    print(
        f"\n{operations} operations, {statuses.total()} requests: {dict(sorted(statuses.items()))}"
    )
    assert statuses.total() >= 5 * operations
    assert not failures, "\n".join(failures[:20]) + "\n" + served.log_text()[-3000:]
