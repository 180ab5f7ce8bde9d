#!/usr/bin/perl
# A worker killed with SIGKILL in the middle of its work: worker A has every insurer call in
# flight (insurers answer in 5 s) and, with Kafka down, intake entries it stored but could not
# announce (so not acknowledged). Worker B, started with a short sweep interval, stale-after and
# claim idle time, takes over: A's pending intake entries are claimed (XAUTOCLAIM), the tasks A
# abandoned are done again, every quote ends terminal, nothing is lost or duplicated.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $T0 = time;
my $J = JSON::PP->new->utf8->canonical;
my @CODES = qw(alfa ingos reso rec);
my $N1 = 4;    # applications whose insurer calls are in flight at A
my $N2 = 3;    # applications A stored but could not announce (Kafka down)

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => [ grep { $_ ne 'rec' } @CODES ], latency => '5000');
# one more insurer, answering ok after 5 s too, that records every call it gets
my $rec = OsagoStack::FakeInsurer->new(code => 'rec', mode => 'ok', delay_s => 5, premium => 4321.5);
my $ins_file = $sim->write_insurers("$sim->{dir}/insurers.crash.json", add => [ $rec->entry ]);

my @common = OsagoStack::worker_flags(kafka_session_timeout_ms => 6000);
my $A = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $ins_file,
                                migrate => 1, name => 'crash-A', args => \@common);

# --- A: every call in flight ----------------------------------------------------------------------
my @ids;
push @ids, scalar OsagoStack::intake_entry($r) for 1 .. $N1;
my $in = OsagoStack::_in(\@ids);
my $running = sub { scalar $pg->psql("SELECT count(*) FROM quotes WHERE status = 'running'"
                                     . " AND application_id IN ($in)", quiet => 1) // 0 };
my $all_running = OsagoStack::wait_until(sub { $running->() == $N1 * @CODES }, 20, 0.1);
my $running_at = time;
ok($all_running,
   sprintf('A runs all %d tasks (quotes running, insurer calls in flight) at %.1f s',
           $N1 * @CODES, time - $T0))
    or diag explain [ $pg->psql('SELECT application_id, insurer_code, status FROM quotes') ];
is(scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id IN ($in)"
                    . ' AND (heartbeat_at IS NULL OR attempt < 1)'), 0,
   'each running task has a heartbeat and an attempt');

# --- A: entries stored but not acknowledged (Kafka down) ----------------------------------------
is($kb->control('broker down 1'), 'ok', 'Kafka broker down');
# in one MULTI/EXEC, so that the relay reads them in one batch (and then waits for Kafka)
my @late = OsagoStack::intake_entries($r, $N2);
ok(OsagoStack::wait_until(sub { (OsagoStack::pending_by_consumer($r)->{'crash-A'} // 0) == $N2 }, 10, 0.05),
   "A read the $N2 new entries and holds them pending")
    or diag explain OsagoStack::pending_by_consumer($r);
my $late_in = OsagoStack::_in(\@late);
OsagoStack::wait_until(sub { $pg->psql("SELECT count(*) FROM applications WHERE id IN ($late_in)",
                                       quiet => 1) == $N2 }, 5, 0.05);
diag 'rows of the unannounced entries in PostgreSQL before the kill: '
    . $pg->psql("SELECT count(*) FROM applications WHERE id IN ($late_in)");
push @ids, @late;
my $killed_at = time;
cmp_ok(time - $running_at, '<', 4, 'all this before the first insurer answers (they take 5 s)');
ok($A->kill('KILL'), 'SIGKILL worker A');
my $st = $A->wait_exit(10);
is(defined $st ? $st & 127 : -1, 9, 'A died of SIGKILL');
is($kb->control('broker up 1'), 'ok', 'Kafka broker up');

my $before = {
    running => $running->(),
    pending => OsagoStack::pending_by_consumer($r),
};
is($before->{running}, $N1 * @CODES, 'A left its tasks running (stale heartbeats to come)');
is($before->{pending}{'crash-A'}, $N2, "A left $N2 intake entries pending");

# --- B takes over -----------------------------------------------------------------------------
my $B = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $ins_file,
    name => 'crash-B',
    args => [ @common, OsagoStack::worker_flags(sweep_interval_s => 1, stale_after_s => 3,
                                                heartbeat_s => 1, claim_idle_ms => 1000) ]);
ok(OsagoStack::wait_until(sub { OsagoStack::pending_count($r) == 0 }, 20, 0.1),
   'B claimed and acknowledged A\'s pending entries (XPENDING 0)')
    or diag explain OsagoStack::pending_by_consumer($r);
ok(OsagoStack::wait_completed($pg, \@ids, 60),
   sprintf('B finished every application (%.1f s after the kill)', time - $killed_at))
    or diag explain [ $pg->psql('SELECT application_id, insurer_code, status, attempt FROM quotes ORDER BY 1, 2') ];
OsagoStack::wait_until(sub {
    !grep { (OsagoStack::read_model($r, $_)->{doc}{status} // '') ne 'completed' } @ids }, 10, 0.1);

OsagoStack::check_all_done($pg, $r, \@ids, \@CODES);
my $q = OsagoStack::quotes_of($pg, \@ids);
my @bad;
for my $id (@ids) {
    for my $c (@CODES) {
        my $x = $q->{$id}{$c} || {};
        push @bad, "$id/$c: " . $J->encode($x)
            unless ($x->{status} // '') eq 'ok' && ($x->{premium} // 0) > 0
                && ($x->{attempt} // 0) >= 1 && ($x->{attempt} // 9) <= 3;
    }
}
ok(!@bad, 'every quote ok (the insurers never fail), attempt within 1..3') or diag join "\n", @bad;
my @redone = map { my $id = $_; map { "$id/$_=$q->{$id}{$_}{attempt}" } @CODES } @ids[0 .. $N1 - 1];
diag 'attempts of the tasks A abandoned: ' . join(' ', map { /=(\d+)$/ } @redone);

# The recording insurer's view: A called it once per application before dying; after the kill,
# one call per task is enough ("one call per attempt", worker/executor.c), more is a duplicate.
my $calls = $rec->calls;
my (%before_kill, %after_kill);
for my $c (@$calls) {
    ($c->{t} < $killed_at ? \%before_kill : \%after_kill)->{ $c->{application_id} // '' }++;
}
my @call_bad = map { "$_: " . ($before_kill{$_} // 0) . ' call(s) before the kill, '
                     . ($after_kill{$_} // 0) . ' after' }
               grep { ($after_kill{$_} // 0) != 1 } @ids;
is(scalar(grep { $before_kill{$_} } @ids), $N1, "before the kill A had called the recording insurer"
   . " for each of the $N1 applications in flight");
ok(!@call_bad, 'after the kill each task is called exactly once more (A\'s lost call re-run once,'
               . ' the new ones once): no duplicate insurer calls') or diag join "\n", @call_bad;

my $mb = $B->metrics;
is(OsagoStack::metric_of($mb, 'intake_claimed') // 0, $N2,
       "B's intake_claimed counts the $N2 entries it took over from A");
is(OsagoStack::metric_of($mb, 'intake_relayed'), $N2, "B relayed exactly A's $N2 entries");
my @claim_log = grep { ($_->{event} // '') eq 'intake_claimed' } @{ $B->log_lines };
ok(@claim_log, 'B logs the takeover') or diag $B->log_text;
my $swept = OsagoStack::metric_of($mb, 'tasks_swept') // 0;
is($swept, $N1 * @CODES, "B's sweeper re-drove each of A's " . ($N1 * @CODES) . ' abandoned tasks once');
my $done_b = OsagoStack::metric_of($mb, 'results_applied') // 0;
is($done_b, $N1 * @CODES + $N2 * @CODES, 'B applied the result of every task (A\'s abandoned ones'
   . ' and the new ones)');
is(OsagoStack::metric_of($mb, 'insurer_calls'), ($N1 + $N2) * @CODES,
   'B\'s insurer_calls: one per task, A\'s lost calls included');
diag "B: tasks_swept $swept, insurer_calls " . (OsagoStack::metric_of($mb, 'insurer_calls') // '?')
   . ', results_duplicate ' . (OsagoStack::metric_of($mb, 'results_duplicate') // '?');
is(scalar $pg->psql("SELECT count(*) FROM quotes WHERE status NOT IN ('ok', 'error')"), 0,
   'no quote left pending or running');

$B->stop;
diag sprintf 'took %.1f s', time - $T0;
done_testing;
