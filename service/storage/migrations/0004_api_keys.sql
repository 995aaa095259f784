-- API keys (`torchdock keys`). Only a key's SHA-256 is kept: keys are 256-bit random values,
-- so a fast hash is as safe as a slow one, and verifying costs nothing per request.
CREATE TABLE api_keys (
    key_id        text        PRIMARY KEY,
    name          text        NOT NULL UNIQUE,
    secret_sha256 bytea       NOT NULL,
    models        text[],                 -- NULL: every model
    rate_limit    text,                   -- e.g. '20/second'; NULL: API_KEY_RATE_LIMIT
    expires_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

-- Which key made a prediction request (NULL when keys are off).
ALTER TABLE predictions ADD COLUMN api_key_id text;
