#!/usr/bin/perl
# The executor's heartbeat never waits for a row lock. Results locks the quotes of a batch in
# key order; a heartbeat that waited on rows in its own order deadlocked with it under load, and
# PostgreSQL broke the cycle only after deadlock_timeout (1 s), then results retried a second
# later: every application stalled for two seconds, once per heartbeat. Claims share the
# heartbeat's connection, so a heartbeat waiting on any lock also stops new tasks from starting.
#
# Here another transaction holds one running quote locked for 6 s. Meanwhile the executor's
# statements must never wait on a lock, the other running quotes must keep getting heartbeats,
# and a new application's fast quote must be claimed and answered; once the lock is gone,
# everything completes, each insurer called once per task. Last, the executor's other many-row
# statement, which hands the running calls back on a clean stop, now locks in results' order;
# and a call waiting for its retry is handed back at the next attempt.
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
my $SLOW_MS = 15000;    # alfa: the call that stays running through the lock
my $LOCK_S = 12;       # what happens inside it takes about 4 s; room for a slow machine

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '50',
                                      opts => { alfa => "latency=$SLOW_MS" });
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
    name => 'hb-locks-1',
    args => [ OsagoStack::worker_flags(heartbeat_s => 1, stale_after_s => 30,
                                       sweep_interval_s => 1) ]);

my $quote = sub {
    my ($id, $code) = @_;
    return scalar $pg->psql("SELECT status FROM quotes WHERE application_id = '$id'"
                            . " AND insurer_code = '$code'", quiet => 1) // '';
};

my $first = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_until(sub { $quote->($first, 'alfa') eq 'running' }, 20, 0.05),
   'the first application\'s slow call is running');

my $lpid = $pg->hold_lock("application_id = '$first' AND insurer_code = 'alfa'", $LOCK_S);
ok($lpid, "that quote is locked by another transaction (for $LOCK_S s)");
my $locked_at = time;

# Two heartbeats are due while the lock is held before the next application arrives.
my $waits = 0;
while (time - $locked_at < 2.2) {
    $waits += scalar $pg->psql("SELECT count(*) FROM pg_stat_activity"
                               . " WHERE wait_event_type = 'Lock' AND query LIKE '%quotes%'"
                               . " AND pid <> pg_backend_pid()", quiet => 1) // 0;
    sleep 0.05;
}
is($waits, 0, 'no statement on quotes waited on the lock, sampled for 2.2 s (heartbeats due)');

my $second = OsagoStack::intake_entry($r);
my $answered_at;
OsagoStack::wait_until(sub {
    return 0 unless $quote->($second, 'ingos') eq 'ok';
    $answered_at = time - $locked_at;
    1 }, $LOCK_S, 0.05);
ok(defined $answered_at, 'a new application\'s fast quote was claimed and answered');
cmp_ok($answered_at // 99, '<', $LOCK_S - 1,
       sprintf('  %.1f s into the %d s lock', $answered_at // 99, $LOCK_S));
ok(OsagoTest::pid_alive($lpid), '  (the lock was still held then)');

ok(OsagoStack::wait_until(sub {
       scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id = '$second'"
                        . " AND insurer_code = 'alfa' AND status = 'running'"
                        . " AND heartbeat_at > updated_at + interval '0.5 s'", quiet => 1) },
       3, 0.1) && OsagoTest::pid_alive($lpid),
   'the other running quote got heartbeats while the lock was held');

ok(OsagoStack::wait_completed($pg, [ $first, $second ], 30), 'both applications completed');
waitpid($lpid, 0);
my $m = $w->metrics;
is(OsagoStack::metric_of($m, 'insurer_calls'), 2 * @CODES, 'one insurer call per task');
is(OsagoStack::metric_of($m, 'tasks_swept'), 0, 'no task swept');

# --- the other many-row statement: a clean stop hands the running calls back ----------------------
my $third = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_until(sub { $quote->($third, 'alfa') eq 'running'
                                && $quote->($third, 'ingos') eq 'ok' }, 20, 0.05),
   'a third application: its slow call running, the fast one answered');
$w->stop;    # asserts a clean exit and no sanitizer report
is(scalar $pg->psql("SELECT status || ' ' || attempt FROM quotes WHERE application_id = '$third'"
                    . " AND insurer_code = 'alfa'"), 'pending 1',
   'the stop handed the running call back: pending, at the same attempt');
like($w->log_text, qr/"event":"tasks_released"/, '  and logged it');

my $w2 = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
    name => 'hb-locks-2', args => [ OsagoStack::worker_flags(stale_after_s => 30) ]);
ok(OsagoStack::wait_completed($pg, [$third], 40), 'the next worker completes it');
is(OsagoStack::metric_of($w2->metrics, 'insurer_calls'), 1,
   '  calling only the insurer whose call was handed back');
is(scalar $pg->psql("SELECT status || ' ' || attempt FROM quotes WHERE application_id = '$third'"
                    . " AND insurer_code = 'alfa'"), 'ok 1', '  at the same attempt');
unlike($pg->log, qr/deadlock detected/, 'PostgreSQL logged no deadlock');
OsagoStack::check_all_done($pg, $r, [ $first, $second, $third ], \@CODES);
$w2->stop;

# --- a call whose attempt failed, its retry not yet due, is handed back at the next attempt -------
# At its own attempt, the redelivered task of the failed attempt would run it again, and the
# retry as well: four calls in all where three are allowed.
my $bad = OsagoStack::FakeInsurer->new(code => 'bad', mode => 'status');
my $ins_file = $sim->write_insurers("$sim->{dir}/insurers.retry.json", add => [ $bad->entry ]);
my $w3 = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $ins_file,
    name => 'hb-locks-3',
    args => [ OsagoStack::worker_flags(retry_base_ms => 30000, retry_max_ms => 30000) ]);
my $fourth = OsagoStack::intake_entry($r);
my $bad_calls = sub { scalar grep { ($_->{application_id} // '') eq $fourth } @{ $bad->calls } };
ok(OsagoStack::wait_until(sub { $bad_calls->() == 1 }, 20, 0.05),
   'a fourth application: its call to an insurer answering 500 failed, the retry 30 s away');
$w3->stop;
is(scalar $pg->psql("SELECT status || ' ' || attempt FROM quotes WHERE application_id = '$fourth'"
                    . " AND insurer_code = 'bad'"), 'pending 2',
   'the stop handed it back at the next attempt');
my $w4 = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $ins_file,
    name => 'hb-locks-4',
    args => [ OsagoStack::worker_flags(retry_base_ms => 100, retry_max_ms => 200,
                                       sweep_interval_s => 1) ]);
ok(OsagoStack::wait_completed($pg, [$fourth], 40), 'the next worker completes the application');
is(scalar $pg->psql("SELECT status || ' ' || attempt FROM quotes WHERE application_id = '$fourth'"
                    . " AND insurer_code = 'bad'"), 'error 3', '  the quote an error at attempt 3');
is($bad_calls->(), 3, '  after three calls in all, not four')
    or diag explain $bad->calls;
$w4->stop;

done_testing;
