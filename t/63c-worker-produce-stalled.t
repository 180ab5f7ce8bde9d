#!/usr/bin/perl
# The executor while Kafka takes its tasks but refuses its outcomes: outcomes waiting for Kafka
# have --max-in-flight slots of their own, and beyond those they take the calls' slots, so a
# backlog of tasks is not drained into memory (and into one ever larger batch of outcomes) while
# nothing can be confirmed. Once
# the broker takes produce requests again every application completes, each insurer called once.
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
my @CODES = qw(alfa ingos reso);
my $N = 30;
my $SLOTS = 4;
my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '5-10');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

# every task is in Kafka before any executor runs: a backlog of N x 3
my $front = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                    name => 'stalled-front', roles => 'relay,orchestrator');
my @ids = map { scalar OsagoStack::intake_entry($r) } 1 .. $N;
my $tasks = $N * @CODES;
ok(OsagoStack::wait_until(sub {
       (OsagoStack::metric_of($front->metrics, 'applications_started') // 0) >= $N }, 30, 0.1),
   "the orchestrator started all $N applications ($tasks tasks in Kafka)");

# the executor's outcomes are refused for a while (a round of its produce retries, 1 s apart then 2, 4, ..., may take only one)
is($kb->control('request error Produce MSG_SIZE_TOO_LARGE 3'), 'ok',
   'devbroker: the next 3 produce requests are refused');
my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                name => 'stalled-exec', roles => 'executor,results',
                                args => [ '--max-in-flight', $SLOTS ]);
# the consumer group's first join takes the mock a few seconds; then the executor works (or not)
ok(OsagoStack::wait_until(sub { (OsagoStack::metric_of($w->metrics, 'insurer_calls') // 0) >= 1 },
                          30, 0.1), 'the executor took its first tasks');
sleep 1;
my $calls = OsagoStack::metric_of($w->metrics, 'insurer_calls') // -1;
my @refused = grep { ($_->{role} // '') eq 'executor' && ($_->{event} // '') eq 'kafka_error'
                     && ($_->{msg} // '') =~ /^outcomes not confirmed/ } @{ $w->log_lines };
ok(@refused, 'the executor\'s outcomes were refused meanwhile') or diag substr($w->log_text, -2000);
# the calls' slots and the outcomes' own, plus the one task a full executor may take over with
# its poll once a second
cmp_ok($calls, '<=', 2 * $SLOTS + 4, "insurer calls while outcomes wait: $calls, not the backlog of $tasks");

ok(OsagoStack::wait_completed($pg, \@ids, 90), "all $N applications completed once Kafka took them")
    or diag substr($w->log_text, -3000);
OsagoStack::check_all_done($pg, $r, \@ids, \@CODES);
is(OsagoStack::metric_of($w->metrics, 'insurer_calls'), $tasks, "$tasks insurer calls in all: each once");
my ($retried) = $pg->psql('SELECT count(*) FROM quotes WHERE attempt > 1');
is($retried, 0, 'no attempt beyond the first');
ok($w->running, 'the executor runs on');

$w->stop;
$front->stop;
is($w->sanitizer_report, undef, 'no sanitizer report');
diag sprintf 'took %.1f s', time - $T0;
done_testing;
