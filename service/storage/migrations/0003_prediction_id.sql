-- A row's own id, made by the server. The request id is the client's (or its proxy's) to pick:
-- two clients that send the same one must not share a row, nor each other's lookups.
-- The old key stays, so that replicas of the previous release keep inserting during an upgrade.
ALTER TABLE predictions ADD COLUMN prediction_id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE predictions ADD CONSTRAINT predictions_prediction_id_key UNIQUE (prediction_id);
