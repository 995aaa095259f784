-- Rollouts. Each model's routing policy (canary and shadow), shared by every worker and
-- replica: they reread it every ROUTING_REFRESH_S and follow the highest revision. The admin
-- API, `torchdock rollout` and the canary guard write it, so the api's role may too.
CREATE TABLE routing_policies (
    model_name text        PRIMARY KEY,
    policy     jsonb       NOT NULL,
    revision   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every change, and who or what made it (promote, abort, the guard and its reason).
CREATE TABLE routing_events (
    model_name text        NOT NULL,
    revision   bigint      NOT NULL,
    policy     jsonb       NOT NULL,
    action     text        NOT NULL,
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, revision)
);

-- How a row was served: primary (no policy, or a version the client named), canary, or
-- shadow (computed off the request path, never returned). A shadow row has the primary's
-- version and the agreement of the two on the same inputs: top-1 agreement for classifiers,
-- mean cosine for embeddings, max abs diff for tensors (agreement_kind says which).
ALTER TABLE predictions ADD COLUMN role text NOT NULL DEFAULT 'primary';
ALTER TABLE predictions ADD COLUMN compared_version integer;
ALTER TABLE predictions ADD COLUMN agreement double precision;
ALTER TABLE predictions ADD COLUMN agreement_kind text;
CREATE INDEX predictions_rollout_idx ON predictions (model_name, created_at, role)
    WHERE role <> 'primary';

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'torchdock_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON routing_policies TO torchdock_app;
        GRANT SELECT, INSERT ON routing_events TO torchdock_app;
    END IF;
END
$$;
