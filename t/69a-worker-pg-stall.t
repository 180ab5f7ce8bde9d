#!/usr/bin/perl
# A PostgreSQL statement that stalls must not stall the executor. Its heartbeat UPDATE touches
# every quote it holds; here a trigger makes the first heartbeat sleep 8 s (the heartbeat itself
# never waits for a lock: t/69b). The executor's loop, which also reads the insurers' answers
# and produces the results, must go on meanwhile: the calls, 2.5 s long, are answered and
# counted while the heartbeat is still asleep, and the application completes once it is done.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my @CODES = qw(alfa ingos);
my $STALL_S = 8;

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '2500');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

# Only a heartbeat changes heartbeat_at alone; the first one of the run sleeps, once.
$pg->psql(<<SQL);
CREATE TABLE stall_once (done boolean NOT NULL);
INSERT INTO stall_once VALUES (false);
CREATE FUNCTION slow_heartbeat() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    UPDATE stall_once SET done = true WHERE NOT done;
    IF FOUND THEN
        PERFORM pg_sleep($STALL_S);
    END IF;
    RETURN NEW;
END \$\$;
CREATE TRIGGER slow_heartbeat BEFORE UPDATE ON quotes FOR EACH ROW
    WHEN (OLD.status = 'running' AND NEW.status = 'running'
          AND OLD.heartbeat_at IS DISTINCT FROM NEW.heartbeat_at) EXECUTE FUNCTION slow_heartbeat();
SQL
is($pg->last_error, undef, "the first heartbeat made to take $STALL_S s (a trigger)");

my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
    name => 'stall-1', args => [ OsagoStack::worker_flags(heartbeat_s => 1) ]);

my $id = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_until(sub {
       scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id = '$id'"
                        . " AND status = 'running'", quiet => 1) == @CODES }, 20, 0.05),
   'both quotes running (the calls are on their way)');

my $stalled = sub {
    scalar $pg->psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                     . " AND query LIKE '%heartbeat_at = now()%'", quiet => 1) };
ok(OsagoStack::wait_until($stalled, 4, 0.02), 'the executor\'s heartbeat is stalled');
my $stalled_at = time;

my ($answered, $answered_at) = (0, 0);
OsagoStack::wait_until(sub {
    $answered = OsagoStack::metric_of($w->metrics, 'insurer_ok') // 0;
    $answered_at = time - $stalled_at;
    $answered == @CODES }, $STALL_S, 0.1);
is($answered, scalar @CODES, 'the insurers\' answers are read while the heartbeat waits');
cmp_ok($answered_at, '<', $STALL_S - 1,
       sprintf('  %.1f s into the %d s stall: the loop never stalled behind PostgreSQL',
               $answered_at, $STALL_S));
ok($stalled->(), '  (the heartbeat was still asleep then)');

ok(OsagoStack::wait_completed($pg, [$id], 30), 'the heartbeat done: the application completes');
my $m = $w->metrics;
is(OsagoStack::metric_of($m, 'insurer_calls'), scalar @CODES, 'one insurer call per task');
is(OsagoStack::metric_of($m, 'tasks_swept'), 0, 'no task swept');
OsagoStack::check_all_done($pg, $r, [$id], \@CODES);
$w->stop;    # asserts a clean exit and no sanitizer report

done_testing;
