-- One row per prediction request. The key is (request_id, created_at): replaying a spooled row
-- twice inserts it once, and a client that reuses a request id at another time keeps both rows.
CREATE TABLE predictions (
    request_id        text             NOT NULL,
    created_at        timestamptz      NOT NULL,
    model_name        text             NOT NULL,
    model_version     integer          NOT NULL,
    client_addr       text,
    status_code       smallint         NOT NULL,
    cache_result      text             NOT NULL,
    instances         integer          NOT NULL,
    batch_size        integer,
    queue_ms          double precision,
    inference_ms      double precision,
    total_ms          double precision NOT NULL,
    input_digest      text,
    output_digest     text,
    input_payload     bytea,
    output_payload    bytea,
    payload_cap_bytes integer          NOT NULL,
    PRIMARY KEY (request_id, created_at)
);

-- What operators query: recent rows, per model, per status.
CREATE INDEX predictions_created_at_idx ON predictions USING brin (created_at);
CREATE INDEX predictions_model_idx ON predictions (model_name, model_version, created_at);
CREATE INDEX predictions_status_idx ON predictions (status_code, created_at);
