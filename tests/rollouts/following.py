"""Waiting, from a server's metrics, until every one of its workers follows a routing change."""

from __future__ import annotations

import httpx

from tests.prom import sample_value
from tests.system.server import wait_until


def wait_following(
    base_url: str,
    revision: int,
    *,
    since: float,
    shadow: int | None = None,
    model: str = "digits",
    timeout: float = 120.0,
) -> None:
    """Until every worker has read the store since `since`, follows `revision` of `model`'s
    policy or a later one, and has the `shadow` version loaded in its shadow process."""

    def following() -> bool:
        text = httpx.get(f"{base_url}/metrics").text
        read = sample_value(text, "torchdock_routing_policies_read_timestamp_seconds")
        followed = sample_value(text, "torchdock_routing_policy_revision", model_name=model)
        return (
            read > since
            and followed >= revision
            and (
                shadow is None
                or sample_value(
                    text, "torchdock_shadow_ready", model_name=model, model_version=str(shadow)
                )
                == 1
            )
        )

    wait_until(following, timeout, f"every worker following revision {revision}", interval=0.1)
