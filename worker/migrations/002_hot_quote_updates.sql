-- Every quote is written again after its insert: claimed, a heartbeat every 15 s while a call runs,
-- the result. With an index on heartbeat_at (and status in its predicate) none of those writes
-- could be a HOT update: each added an entry to every index of quotes, and the primary key grew
-- three entries per quote. Now no index of quotes covers a column that changes, and pages keep room
-- for the new versions, so the updates stay on their page and touch no index (a quarter less WAL
-- per application, docs/BENCHMARKS.md).
--
-- The sweeper finds running quotes through their application instead: a quote is running only
-- while its application is in_progress, and those are the applications in flight, a small set.
-- Dropping the old index breaks no query of the previous release during a rolling deploy; its
-- sweep only becomes a scan of the primary key until it is replaced.
--
-- Building the index holds writes to applications (intake) for as long as it reads the table: on
-- a large one, build it by hand first with CREATE INDEX CONCURRENTLY and the same definition;
-- this migration then finds it and skips it.
CREATE INDEX IF NOT EXISTS applications_in_progress ON applications (id) WHERE status = 'in_progress';
DROP INDEX IF EXISTS quotes_running_heartbeat;
-- pages filled to 70 % on insert: room on the page for the versions each quote's updates write
ALTER TABLE quotes SET (fillfactor = 70);
