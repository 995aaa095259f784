"""Finding 4: prediction-log rows were keyed by the client's X-Request-ID alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SettingsFactory, serve
from tests.storage.test_prediction_log import PREDICT, ZEROS, wait_for_rows

pytestmark = pytest.mark.integration

TOKEN = "admin-token-admin-token-admin-token"


async def test_two_clients_with_one_request_id_keep_their_own_rows(
    make_settings: SettingsFactory, database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url=database_url,
        spool_dir=tmp_path / "spool",
        log_payloads=True,
        prediction_lookup=True,
        admin_token=TOKEN,
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # A slash, too: such ids could never be looked up, as they cannot sit in one path segment.
    shared = {"X-Request-ID": "order/42"}
    async with serve(settings) as http:
        victim = await http.post(PREDICT, json={"instances": [ZEROS]}, headers=shared)
        blank = [[16.0] * 8 for _ in range(8)]
        attacker = await http.post(PREDICT, json={"instances": [blank]}, headers=shared)
        assert victim.status_code == attacker.status_code == 200
        ids = [victim.headers["x-prediction-id"], attacker.headers["x-prediction-id"]]
        assert ids[0] != ids[1]
        assert await wait_for_rows(database_url, 2) == 2

        own = await http.get(f"/v1/predictions/{ids[0]}", headers=auth)
        assert own.status_code == 200
        # Only the victim's own payload: before, the lookup merged both clients' rows.
        assert own.json()["row"]["output_payload"] is not None
        assert (
            own.json()["row"]["input_digest"]
            != (
                (await http.get(f"/v1/predictions/{ids[1]}", headers=auth)).json()["row"][
                    "input_digest"
                ]
            )
        )
        listed = await http.get("/v1/predictions", params={"request_id": "order/42"}, headers=auth)
        assert listed.status_code == 200
        assert sorted(r["prediction_id"] for r in listed.json()["rows"]) == sorted(ids)
