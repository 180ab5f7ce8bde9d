#!/usr/bin/perl
# Heartbeats under a steady stream of tasks. The executor's claims and heartbeats share one
# PostgreSQL connection, and a claim in flight owns it; with tasks arriving all the time one
# claim follows another. Here every claim transaction takes 0.3 s longer (a trigger) and tasks
# arrive faster than that for 6 s, while every insurer call lasts 8 s: the running quotes'
# heartbeats must still be refreshed every --heartbeat-s, or the sweeper (stale after 3 s)
# would take calls that are running fine and call the insurers twice.
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
my $RATE = 10;          # applications a second, 2 tasks each
my $STREAM_S = 6;
my $HEARTBEAT_S = 1;
my $STALE_S = 3;

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '8000');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

# A claim is the only statement that turns a pending quote running; the first such row of a
# transaction sleeps, so each claim holds the connection 0.3 s more, however many rows it has.
$pg->psql(<<'SQL');
CREATE FUNCTION slow_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('osago_test.slept', true) IS DISTINCT FROM 'yes' THEN
        PERFORM set_config('osago_test.slept', 'yes', true);
        PERFORM pg_sleep(0.3);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow_claim BEFORE UPDATE ON quotes FOR EACH ROW
    WHEN (OLD.status = 'pending' AND NEW.status = 'running') EXECUTE FUNCTION slow_claim();
SQL
is($pg->last_error, undef, 'claims made slow (0.3 s a transaction)');

my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
    name => 'heartbeat-1',
    args => [ OsagoStack::worker_flags(heartbeat_s => $HEARTBEAT_S, stale_after_s => $STALE_S,
                                       sweep_interval_s => 1) ]);

# --- the stream, and the oldest heartbeat of a running quote, sampled meanwhile ----------------------
my (@ids, @ages);
my $t0 = time;
my $age_sql = "SELECT coalesce(extract(epoch FROM max(now() - heartbeat_at)), 0)::numeric(8, 2)"
            . " FROM quotes WHERE status = 'running'";
for my $i (0 .. $RATE * $STREAM_S - 1) {
    my $due = $t0 + $i / $RATE;
    sleep($due - time) if $due > time;
    push @ids, scalar OsagoStack::intake_entry($r);
    push @ages, scalar $pg->psql($age_sql, quiet => 1) // 0 if $i % 3 == 0;
}
# the calls of the last applications run 8 s more: keep watching until they are all running
my $streamed = time - $t0;
while (time - $t0 < $STREAM_S + 4) {
    push @ages, scalar $pg->psql($age_sql, quiet => 1) // 0;
    sleep 0.2;
}
my $claims = OsagoStack::metric_of($w->metrics, 'tasks_started') // 0;
diag sprintf('%d applications in %.1f s; %d tasks started after %.1f s', scalar @ids, $streamed,
             $claims, time - $t0);
my ($max_age) = sort { $b <=> $a } @ages;
cmp_ok($max_age, '<', $HEARTBEAT_S + 1.5,
       "the oldest heartbeat of a running quote, sampled " . scalar(@ages) . " times while claims"
       . " followed one another, was $max_age s (< heartbeat + 1.5 s; stale after $STALE_S s)");

ok(OsagoStack::wait_completed($pg, \@ids, 60), 'every application completed')
    or diag explain [ $pg->psql("SELECT status, count(*) FROM quotes GROUP BY 1") ];
my $m = $w->metrics;
is(OsagoStack::metric_of($m, 'tasks_swept'), 0,
   'the sweeper took no task: every running quote kept a fresh heartbeat');
is(OsagoStack::metric_of($m, 'insurer_calls'), @ids * @CODES,
   'one insurer call per task, none repeated');
is(scalar $pg->psql("SELECT count(*) FROM quotes WHERE status <> 'ok' OR attempt <> 1"), 0,
   'every quote ok at its first attempt');
$w->stop;    # asserts a clean exit and no sanitizer report

done_testing;
