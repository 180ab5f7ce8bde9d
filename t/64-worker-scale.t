#!/usr/bin/perl
# Two osago-worker instances share the load: both read intake entries (one Redis consumer group)
# and both get Kafka partitions (their metrics show work on each side), each task is done once
# (quotes.attempt = 1, one task and one result event per task, calls add up), and every
# application completes.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $T0 = time;
my @CODES = qw(alfa ingos reso vsk rosgosstrakh);
my $N = 40;

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '50-150');
my ($c, $o, $e) = OsagoStack::Worker->migrate($pg);
is($c, 0, 'migrated') or diag "$o$e";

# Both start together, so that they join the consumer groups in the same generation.
my @common = (pg => $pg, redis => $r, kafka => $kb, insurers => $sim, wait => 0,
              args => [ OsagoStack::worker_flags(kafka_session_timeout_ms => 6000,
                                                 log_level => 'debug') ]);
my @w = map { OsagoStack::Worker->new(@common, name => "scale-$_") } 1 .. 2;
for my $w (@w) {
    ok(OsagoStack::wait_until(sub { $w->readyz == 200 }, 30, 0.1), $w->name . ': /readyz 200');
}

# Warm-up: one application through every role, so both are settled in their groups.
my @warm = map { scalar OsagoStack::intake_entry($r) } 1 .. 2;
ok(OsagoStack::wait_completed($pg, \@warm, 40), sprintf('warm-up done (%.1f s)', time - $T0));
# A member that joined a group late makes the group rebalance, and messages whose offsets were
# not committed yet are delivered again (at least once, as designed). The counts of each role
# are measured from a settled state: for 6 s no rebalance reported by librdkafka and no counter
# moving (the auto-commit interval is 5 s, so the warm-up's offsets are committed by then).
my $state = sub {
    my $reb = grep { ($_->{event} // '') eq 'rdkafka' && ($_->{msg} // '') =~ /rebalanc|unassign|revok/i }
              map { @{ $_->log_lines } } @w;
    my @m = map { $_->metrics } @w;
    return join ',', $reb, map { my $k = $_; map { OsagoStack::metric_of($_, $k) // 0 } @m }
        qw(applications_started results_applied results_duplicate insurer_calls tasks_started);
};
my ($sig, $changed, $t_settle) = ($state->(), time, time);
OsagoStack::wait_until(sub {
    my $now = $state->();
    ($sig, $changed) = ($now, time) if $now ne $sig;
    time - $changed >= 6 }, 30, 0.5);
diag sprintf 'groups settled after %.1f s (%s)', time - $t_settle, $sig;
my @m0 = map { $_->metrics } @w;

my @ids;
for (1 .. $N) {
    push @ids, scalar OsagoStack::intake_entry($r);
    sleep 0.025;
}
ok(OsagoStack::wait_completed($pg, \@ids, 60),
   sprintf('all %d applications completed (%.1f s since start)', $N, time - $T0));
OsagoStack::wait_until(sub {
    !grep { (OsagoStack::read_model($r, $_)->{doc}{status} // '') ne 'completed' } @ids }, 10, 0.1);
sleep 0.5;
my @m1 = map { $_->metrics } @w;

my %want = (intake_relayed => $N, applications_started => $N, insurer_calls => $N * @CODES,
            results_applied => $N * @CODES, applications_completed => $N);
for my $k (sort keys %want) {
    my @d = map { (OsagoStack::metric_of($m1[$_], $k) // -1e9)
                  - (OsagoStack::metric_of($m0[$_], $k) // 0) } 0, 1;    # missing: a failure
    ok($d[0] > 0 && $d[1] > 0, "$k: both workers took a share ($d[0] + $d[1])");
    is($d[0] + $d[1], $want{$k}, "$k: together exactly $want{$k}, each once");
}
for my $k (qw(tasks_retried tasks_swept tasks_failed)) {
    is_deeply([ map { OsagoStack::metric_of($m1[$_], $k) } 0, 1 ], [ 0, 0 ], "$k: 0 on both");
}

# Results delivered twice (results_duplicate): allowed for the warm-up while the groups settle
# (at least once), not for the batch, which ran on settled groups.
my %in_batch = map { $_ => 1 } @ids;
my (@dup_batch, @dup_warm);
for my $w (@w) {
    for my $l (grep { ($_->{event} // '') eq 'result_duplicate' } @{ $w->log_lines }) {
        my ($app) = ($l->{msg} // '') =~ /^([0-9a-f-]{36})/;
        push @{ $in_batch{ $app // '' } ? \@dup_batch : \@dup_warm }, $w->name . ": $l->{msg}";
    }
}
ok(!@dup_batch, 'no task result of the batch delivered twice to the results role')
    or diag join "\n", @dup_batch[0 .. ($#dup_batch > 10 ? 10 : $#dup_batch)];
diag scalar(@dup_warm) . ' warm-up result(s) delivered again while the groups settled' if @dup_warm;

OsagoStack::check_all_done($pg, $r, [ @warm, @ids ], \@CODES);
my @att = $pg->psql("SELECT application_id, insurer_code, attempt, status FROM quotes"
                    . " WHERE attempt <> 1 OR status <> 'ok'");
ok(!@att, 'quotes.attempt = 1 and status ok everywhere: each task done once') or diag join "\n", @att;
is(OsagoStack::pending_count($r), 0, 'every intake entry acknowledged');

# Kafka, for the measured batch: one Started per application, one Task and one TaskResult per
# task (the warm-up may have been delivered twice before the groups settled; that is allowed)
my %per;
my %batch = map { $_ => 1 } @ids;
for my $t (qw(started task task-result)) {
    my $msgs = [ grep { $batch{ $_->{event}{application_id} // '' } }
                 @{ OsagoStack::kafka_messages($kb, "osago.application.$t") } ];
    my %n;
    $n{ ($_->{event}{application_id} // '') . ($t eq 'started' ? '' : '/' . ($_->{event}{data}{insurer} // '')) }++
        for @$msgs;
    my @dup = grep { $n{$_} != 1 } sort keys %n;
    my $want = $t eq 'started' ? $N : $N * @CODES;
    is(scalar @$msgs, $want, "topic $t: $want events for the batch, one per " . ($t eq 'started' ? 'application' : 'task'));
    ok(!@dup, "  none twice on $t") or diag "@dup[0 .. ($#dup > 10 ? 10 : $#dup)]";
    my %parts = map { $_->{partition} => 1 } @$msgs;
    $per{$t} = scalar keys %parts;
}
is($per{task}, 4, 'tasks spread over the 4 partitions');

$_->stop for @w;
diag sprintf 'took %.1f s', time - $T0;
done_testing;
