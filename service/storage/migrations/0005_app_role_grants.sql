-- What the api may do, granted to the role `torchdock_app` where the deployment made one (the
-- compose stack's init script does; docs/security.md says how elsewhere): add and read log
-- rows, and read the keys. Schema changes, deleting rows (retention) and managing keys stay
-- with the database's owner, who runs the migrations, `torchdock db prune` and `torchdock keys`.
-- A later migration that adds a table grants torchdock_app what it needs of it, the same way.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'torchdock_app') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO torchdock_app', current_schema());
        GRANT SELECT, INSERT ON predictions TO torchdock_app;
        GRANT SELECT ON api_keys, schema_migrations TO torchdock_app;
    END IF;
END
$$;
