-- Every quote is written three times after its insert (claimed, heartbeat, result). With an index
-- on heartbeat_at (and status in its predicate) none of those writes could be a HOT update: each
-- added an entry to every index of quotes and bloated its primary key threefold. Now no index of
-- quotes covers a column that changes, and pages keep room for the new versions, so the updates
-- stay on their page and touch no index (a quarter less WAL per application, docs/BENCHMARKS.md).
--
-- The sweeper finds running quotes through their application instead: a quote is running only
-- while its application is in_progress, and those are the applications in flight, a small set.
-- Dropping the old index breaks no query of the previous release during a rolling deploy; its
-- sweep only becomes a scan of the primary key until it is replaced.
CREATE INDEX applications_in_progress ON applications (id) WHERE status = 'in_progress';
DROP INDEX quotes_running_heartbeat;
-- pages filled to 70 % on insert: room on the page for the versions each quote's updates write
ALTER TABLE quotes SET (fillfactor = 70);
