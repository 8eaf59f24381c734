-- The schema's owner, made once by the superuser through the local socket: the postgres image runs this
-- file at its first start (stack.yml mounts it into /docker-entrypoint-initdb.d, after the roles script),
-- the local stack before its migrations, and an operator once on a database created before it existed
-- (deploy/README.md). Every later migration runs as pulsestack_owner, so the superuser logs in over the
-- network for nothing (pulsestack/store/pg_hba.conf refuses it there). Safe to run again.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pulsestack_owner') THEN
        CREATE ROLE pulsestack_owner LOGIN;
    END IF;
END $$;
-- CREATEROLE: the migrations create the service roles and `pulsestack migrate` sets their passwords;
-- PostgreSQL 16+ lets it alter only the roles it holds ADMIN on (granted below, or by creating them).
ALTER ROLE pulsestack_owner LOGIN CREATEROLE NOSUPERUSER NOCREATEDB NOREPLICATION NOBYPASSRLS;

DO $$
DECLARE
    r record;
BEGIN
    -- The database's owner owns its public schema (pg_database_owner), so it may create the tables.
    EXECUTE format('ALTER DATABASE %I OWNER TO pulsestack_owner', current_database());
    -- Service roles made by the superuser (the image's roles script, earlier versions): ADMIN only, so the
    -- owner can set their passwords but neither uses their rights nor becomes them.
    -- (pulsestack_pulse: until migration 006, run as the owner, drops it.)
    FOR r IN SELECT rolname FROM pg_roles WHERE rolname IN
            ('pulsestack_raw', 'pulsestack_pulse', 'pulsestack_registry', 'pulsestack_reader', 'pulsestack_alerting')
    LOOP
        EXECUTE format('GRANT %I TO pulsestack_owner WITH ADMIN TRUE, INHERIT FALSE, SET FALSE', r.rolname);
    END LOOP;
    -- What earlier migrations created as the superuser (tables, partitions, views, whichever migration made
    -- them). A table's sequences follow it; partitions do not.
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND c.relowner <> 'pulsestack_owner'::regrole
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO pulsestack_owner', r.name);
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind = 'S' AND c.relowner <> 'pulsestack_owner'::regrole
    LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO pulsestack_owner', r.name);
    END LOOP;
    -- Including the SECURITY DEFINER partition functions: they now act as the owner, not the superuser.
    FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public' AND p.proowner <> 'pulsestack_owner'::regrole
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO pulsestack_owner', r.name);
    END LOOP;
END $$;
-- Migration 007 lets the read-only role list pg_wal and the archiver's status folder: the owner may pass
-- on EXECUTE on those two server functions (and so runs them itself), nothing more of the superuser's.
GRANT EXECUTE ON FUNCTION pg_ls_waldir(), pg_ls_archive_statusdir() TO pulsestack_owner WITH GRANT OPTION;
