-- Which replica answered, and the problem type of a failed request.
ALTER TABLE predictions ADD COLUMN replica_id text;
ALTER TABLE predictions ADD COLUMN error_type text;
