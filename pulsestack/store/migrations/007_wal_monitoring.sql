-- The swarm exporter, logged in as the read-only role, measures pg_wal and the WAL segments waiting for the
-- archiver (docs/durability.md). pg_stat_archiver and the settings it reads are readable by every role;
-- only these two directory listings are not. EXECUTE on them rather than pg_monitor: that role would also
-- let the dashboards' role read every session's query text and every setting.
GRANT EXECUTE ON FUNCTION pg_ls_waldir(), pg_ls_archive_statusdir() TO pulsestack_reader;
