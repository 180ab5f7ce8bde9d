#!/usr/bin/perl
# A PostgreSQL statement that stalls must not stall the executor. Its heartbeat UPDATE touches
# every quote it holds; here another transaction holds those rows locked for 8 s, so the
# heartbeat waits on the lock. The executor's loop, which also reads the insurers' answers and
# produces the results, must go on meanwhile: the calls, 2.5 s long, are answered and counted
# while the lock is still held, and the application completes once it is released.
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
my $LOCK_S = 8;

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '2500');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
    name => 'stall-1', args => [ OsagoStack::worker_flags(heartbeat_s => 1) ]);

my $id = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_until(sub {
       scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id = '$id'"
                        . " AND status = 'running'", quiet => 1) == @CODES }, 20, 0.05),
   'both quotes running (the calls are on their way)');

my $lockfile = "$pg->{dir}/stall-lock.out";
my ($lpid) = OsagoStack::_spawn(
    cmd => [ 'psql', '-X', '-q', '-h', '127.0.0.1', '-p', $pg->port, '-U', 'osago', '-d', 'osago',
             '-c', "BEGIN; SELECT 1 FROM quotes WHERE application_id = '$id' FOR UPDATE;"
                   . " SELECT pg_sleep($LOCK_S); COMMIT;" ],
    stderr => $lockfile, stdout => $lockfile);
ok(OsagoStack::wait_until(sub {
       scalar $pg->psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
                        quiet => 1) }, 5, 0.02),
   "the quotes are locked by another transaction (for $LOCK_S s)");
my $locked_at = time;

ok(OsagoStack::wait_until(sub {
       scalar $pg->psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        . " AND query LIKE '%heartbeat_at = now()%'", quiet => 1) }, 4, 0.05),
   'the executor\'s heartbeat waits on that lock');

my ($answered, $answered_at) = (0, 0);
OsagoStack::wait_until(sub {
    $answered = OsagoStack::metric_of($w->metrics, 'insurer_ok') // 0;
    $answered_at = time - $locked_at;
    $answered == @CODES }, $LOCK_S, 0.1);
is($answered, scalar @CODES, 'the insurers\' answers are read while the heartbeat waits');
cmp_ok($answered_at, '<', $LOCK_S - 1,
       sprintf('  %.1f s into the %d s lock: the loop never stalled behind PostgreSQL',
               $answered_at, $LOCK_S));
ok(OsagoTest::pid_alive($lpid), '  (the lock was still held then)');

ok(OsagoStack::wait_completed($pg, [$id], 30), 'the lock released: the application completes');
waitpid($lpid, 0);
my $m = $w->metrics;
is(OsagoStack::metric_of($m, 'insurer_calls'), scalar @CODES, 'one insurer call per task');
is(OsagoStack::metric_of($m, 'tasks_swept') // 0, 0, 'no task swept');
OsagoStack::check_all_done($pg, $r, [$id], \@CODES);
$w->stop;    # asserts a clean exit and no sanitizer report

done_testing;
