#!/usr/bin/perl
# The results role waits for PostgreSQL's answer to each round trip of its transaction. When
# PostgreSQL stops answering in the middle (a hung server, a partition), a stop must still end
# the role promptly: the round trip is abandoned (PostgreSQL rolls the transaction back), the
# offsets of its results were never stored, and the next results role applies them. Before,
# the wait had no end and the worker had to be killed.
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
my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '2000-2000');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

my $proxy = OsagoStack::TcpProxy->new(to => $pg->port);
my $via = $proxy->conninfo($pg);

my $front = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                    name => 'stalled-front',
                                    roles => 'relay,orchestrator,executor,sweeper');
my $results = OsagoStack::Worker->new(pg => $via, redis => $r, kafka => $kb, insurers => $sim,
                                      name => 'stalled-results', roles => 'results',
                                      args => [ '--log-level', 'debug' ]);    # pg_waiting

my $warm = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_completed($pg, [$warm], 60), 'through the proxy: an application completes');

# the stall comes once results has shown the application started (its read model, from a
# plain statement) and before the answers come: their transaction is what waits
my $id = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_until(sub {
       ((OsagoStack::read_model($r, $id)->{doc} || {})->{status} // '') eq 'in_progress' }, 20, 0.02),
   'the next application started, in Redis');
my $stalled_from = scalar @{ $results->log_lines };
$proxy->stall;
ok(OsagoStack::wait_until(sub {
       (OsagoStack::metric_of($front->metrics, 'insurer_ok') // 0) >= 2 * @CODES }, 20, 0.05),
   'PostgreSQL silent to results: the next application\'s answers are in');
ok(OsagoStack::wait_logged($results, $stalled_from, 10,
                           sub { ($_[0]{event} // '') eq 'pg_waiting' }),
   '  results has them, and waits for PostgreSQL (pg_waiting)');
is(scalar $pg->psql("SELECT status FROM applications WHERE id = '$id'"), 'in_progress',
   '  and nothing of them is applied');

my $t0 = time;
$results->stop;    # asserts exit 0 (it had to be killed before) and no sanitizer report
my $took = time - $t0;
cmp_ok($took, '<', 3, sprintf('  a stop ends the wait: %.1f s', $took));
ok((grep { ($_->{event} // '') eq 'pg_abandoned' } @{ $results->log_lines }),
   '  and says the round trip was abandoned');

$proxy->pass;
my $next = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                   name => 'stalled-next', roles => 'results');
ok(OsagoStack::wait_completed($pg, [$id], 30),
   'the next results role applies them (redelivered: their offsets were never stored)');
is(OsagoStack::metric_of($front->metrics, 'insurer_calls'), 2 * @CODES, 'each insurer called once');
OsagoStack::check_all_done($pg, $r, [ $warm, $id ], \@CODES);
$next->stop;
$front->stop;
$proxy->stop;

done_testing;
