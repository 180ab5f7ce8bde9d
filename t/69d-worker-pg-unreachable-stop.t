#!/usr/bin/perl
# Stopping an executor while its reconnect waits on a PostgreSQL that takes connections and never
# answers: the stop drops the attempt rather than wait out the connect timeout, and does not try
# to hand its calls back (that would wait the same timeout for nothing). It says so, and the
# sweeper re-drives the calls once their heartbeat is stale. With the blocking connect the
# executor had before, a stop waited for the connect in progress to time out.
#
# Then the hand-back itself gets no answer: another transaction holds one of the running quotes
# locked, and the hand-back must wait for that lock (it locks in results' order, never skips).
# It is given up after 5 s; before, the stop waited as long as the lock was held.
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
my $CONNECT_TIMEOUT_S = 8;

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => 4000);
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

my $proxy = OsagoStack::TcpProxy->new(to => $pg->port);
my $via = $proxy->conninfo($pg, connect_timeout => $CONNECT_TIMEOUT_S);

my $front = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
    name => 'stop-front', roles => 'relay,orchestrator,results,sweeper',
    args => [ OsagoStack::worker_flags(stale_after_s => 6, sweep_interval_s => 1, heartbeat_s => 1) ]);
my $exec = OsagoStack::Worker->new(pg => $via, redis => $r, kafka => $kb, insurers => $sim,
    name => 'stop-exec', roles => 'executor',
    args => [ OsagoStack::worker_flags(heartbeat_s => 1) ]);

my $id = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_until(sub {
       scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id = '$id'"
                        . " AND status = 'running'", quiet => 1) == @CODES }, 20, 0.05),
   'the calls are out');
$proxy->hang;
# the next heartbeat finds the connection closed; the reconnect after it is held unanswered
ok(OsagoStack::wait_until(sub { $proxy->held > 0 }, 5, 0.05),
   'PostgreSQL silent: the executor\'s reconnect is waiting');

my $t0 = time;
$exec->stop;    # asserts a clean exit and no sanitizer report
my $took = time - $t0;
cmp_ok($took, '<', 3, sprintf('  a stop then takes %.1f s (the connect timeout is %d s)',
                              $took, $CONNECT_TIMEOUT_S));
my ($not) = grep { ($_->{event} // '') eq 'tasks_not_released' } @{ $exec->log_lines };
like($not->{msg} // '', qr/^2 unfinished tasks not handed back: PostgreSQL is not answering/,
     '  and says its 2 calls were not handed back');
ok(!(grep { ($_->{event} // '') eq 'tasks_released' } @{ $exec->log_lines }),
   '  (no hand-back tried)');

$proxy->pass;
my $next = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                   name => 'stop-next', roles => 'executor');
ok(OsagoStack::wait_completed($pg, [$id], 40), 'the sweeper re-drives them; they complete');
is(OsagoStack::metric_of($front->metrics, 'tasks_swept'), scalar @CODES, '  2 tasks swept');
OsagoStack::check_all_done($pg, $r, [$id], \@CODES);

# --- the hand-back held by a row lock -------------------------------------------------------------
my $LOCK_S = 20;
my $id2 = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_until(sub {
       scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id = '$id2'"
                        . " AND status = 'running'", quiet => 1) == @CODES }, 20, 0.05),
   'a second application: its calls are out');
my $lpid = $pg->hold_lock("application_id = '$id2' AND insurer_code = 'alfa'", $LOCK_S);
ok($lpid, "  one of its quotes is locked by another transaction (for $LOCK_S s)");
$t0 = time;
$next->stop(timeout => 30);
$took = time - $t0;
cmp_ok($took, '<', 12, sprintf('  a stop gives the hand-back up: %.1f s, the lock held %d s',
                              $took, $LOCK_S));
my @log = @{ $next->log_lines };
ok((grep { ($_->{event} // '') eq 'pg_abandoned' && ($_->{msg} // '') =~ /^out of time/ } @log),
   '  and says it gave PostgreSQL\'s answer up');
my ($rel) = grep { ($_->{event} // '') eq 'tasks_released' } @log;
like($rel->{msg} // '', qr/^0 of 2 unfinished tasks handed back/, '  none handed back, it says');
ok(OsagoTest::pid_alive($lpid), '  (the lock was still held then)');
$pg->psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep'");
waitpid($lpid, 0);

my $last = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                   name => 'stop-last', roles => 'executor');
ok(OsagoStack::wait_completed($pg, [$id2], 40), 'the sweeper re-drives them; they complete');
OsagoStack::check_all_done($pg, $r, [ $id, $id2 ], \@CODES);
$last->stop;
$front->stop;
$proxy->stop;

done_testing;
