#!/usr/bin/perl
# --max-in-flight bounds the executor's insurer calls without stalling it: with a limit of 4 and
# 200 calls queued at once, the insurers never see more than 4 calls from the worker at a time
# (insurer-sim's max_waiting), every call is made once, and the backlog drains at the pace the
# limit allows (200 / 4 x 50 ms = 2.5 s), not in bursts separated by idle time. The executor
# used to pause its Kafka partitions when full; librdkafka then took up to a second after each
# resume to fetch again, so this took 25-50 s.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use JSON::PP ();
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $LIMIT = 4;
my $N = 20;
my $LATENCY_MS = 50;
my @CODES = qw(alfa ingos reso vsk rgs sogaz zetta sber tinkoff renins);

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => "$LATENCY_MS-$LATENCY_MS");
my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                migrate => 1, name => 'flow-1', wait => 'readyz',
                                args => [ OsagoStack::worker_flags(max_in_flight => $LIMIT,
                                                                   kafka_session_timeout_ms => 6000) ]);

# one application through every role first: the consumer groups' first join takes seconds
my @warm = (scalar OsagoStack::intake_entry($r));
ok(OsagoStack::wait_completed($pg, \@warm, 60), 'warm-up application completed');
my $sim_health = sub {
    JSON::PP->new->utf8->decode(OsagoTest::http(GET => $sim->url('/healthz'))->{content});
};
is($sim_health->()->{max_waiting}, $LIMIT, "warm-up: the insurers saw $LIMIT calls at once");

my $t0 = time;
my @ids = OsagoStack::intake_entries($r, $N);
ok(OsagoStack::wait_completed($pg, \@ids, 120), "all $N applications completed");
my $took = time - $t0;
my $ideal = $N * @CODES / $LIMIT * $LATENCY_MS / 1000;

my $h = $sim_health->();
is($h->{max_waiting}, $LIMIT, "the insurers never had more than $LIMIT calls from the worker at once");
is($h->{waiting}, 0, 'and none is left waiting');
my $in = join ',', map { "'$_'" } @ids;
is(scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id IN ($in)"
                    . " AND status = 'ok' AND attempt = 1"),
   $N * @CODES, 'every quote ok at its first attempt');
is($w->metric('insurer_calls'), ($N + 1) * @CODES, 'one call per quote (warm-up included)');
cmp_ok($took, '<', 5 * $ideal,
       sprintf('drained in %.1f s: within 5x the %.1f s the limit allows', $took, $ideal));

$w->stop;
done_testing;
