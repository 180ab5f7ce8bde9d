#!/usr/bin/perl
# A PostgreSQL that takes connections and never answers (a stall, a partition that drops rather
# than refuses) must not stall the executor. Its loop also reads the insurers' answers and
# produces the results, so it connects without blocking: the connect is polled beside the calls
# and given up after the conninfo's connect_timeout. Here the executor runs alone in a worker
# whose PostgreSQL is behind a proxy; the proxy closes the executor's connection while two 3-s
# calls are out and then holds every new connection unanswered. The calls are answered and the
# application completes (results runs in another worker, with PostgreSQL direct) while the
# executor's reconnect is still waiting; a connect that blocked would have held those answers
# for the whole connect timeout (8 s here). Once PostgreSQL answers again the executor
# reconnects and takes the next application.
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
my $CALL_S = 3;
my $CONNECT_TIMEOUT_S = 8;

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => $CALL_S * 1000);
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

my $proxy = OsagoStack::TcpProxy->new(to => $pg->port);
my $via = $proxy->conninfo($pg, connect_timeout => $CONNECT_TIMEOUT_S);

my $front = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                    name => 'unreach-front',
                                    roles => 'relay,orchestrator,results,sweeper');
my $exec = OsagoStack::Worker->new(pg => $via, redis => $r, kafka => $kb, insurers => $sim,
                                   name => 'unreach-exec', roles => 'executor',
                                   args => [ OsagoStack::worker_flags(heartbeat_s => 1) ]);

my $first = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_completed($pg, [$first], 30),
   'through the proxy: an application completes');

# Until every quote of the application is running: its insurer calls are out.
sub calls_out {
    my ($app) = @_;
    return OsagoStack::wait_until(sub {
        scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id = '$app'"
                         . " AND status = 'running'", quiet => 1) == @CODES }, 20, 0.05);
}

my $id = OsagoStack::intake_entry($r);
ok(calls_out($id), 'the next one\'s quotes running (the calls are out)');
$proxy->hang;
my $hung_at = time;

ok(OsagoStack::wait_completed($pg, [$id], $CONNECT_TIMEOUT_S + 10),
   'PostgreSQL silent to the executor: the application completes all the same');
my $took = time - $hung_at;
cmp_ok($took, '<', $CONNECT_TIMEOUT_S - 1,
       sprintf('  %.1f s after PostgreSQL went silent (calls of %d s; a blocking connect '
               . 'would have held the answers %d s)', $took, $CALL_S, $CONNECT_TIMEOUT_S));
is(scalar(grep { ($_->{event} // "") eq 'pg_connect_failed' } @{ $exec->log_lines }), 0,
   '  while the executor\'s reconnect was still waiting');

my $failed;
ok(OsagoStack::wait_until(sub {
       ($failed) = grep { ($_->{event} // "") eq 'pg_connect_failed' } @{ $exec->log_lines } }, 15, 0.2),
   'the connect is given up after the connect timeout, and said so');
like($failed->{msg} // '', qr/cannot connect to PostgreSQL: no connection within the connect timeout/,
     '  with the reason');
is($exec->healthz, 200, 'the executor\'s worker stays up meanwhile');

$proxy->pass;
my $last = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_completed($pg, [$last], 30),
   'PostgreSQL answering again: the executor reconnects and the next application completes');
ok((grep { ($_->{event} // "") eq 'pg_connected' } @{ $exec->log_lines }), '  and logs that it reconnected');

my $m = $exec->metrics;
is(OsagoStack::metric_of($m, 'insurer_calls'), 3 * @CODES, 'one insurer call per task');
$exec->stop;    # asserts a clean exit and no sanitizer report

# A connection that breaks while nothing uses it is found broken only by the next statement. At a
# stop that statement is the hand-back of the calls in hand: it is made again on a new connection.
# (A heartbeat every 60 s, so that nothing else finds the break first.) This executor's conninfo
# lists a silent address before the proxy: the hand-back's connect, made once the stop flag is
# set, goes round the addresses past it, as libpq's blocking connect would.
my $silent = OsagoStack::TcpProxy->new(to => $pg->port);
$silent->hang;
(my $listed = $proxy->conninfo($pg, connect_timeout => 2))
    =~ s/\bhost=\S+ port=(\d+)/host=127.0.0.1,127.0.0.1 port=@{[ $silent->port ]},$1/;
my $quiet = OsagoStack::Worker->new(pg => $listed, redis => $r, kafka => $kb, insurers => $sim,
                                    name => 'unreach-quiet', roles => 'executor',
                                    args => [ OsagoStack::worker_flags(heartbeat_s => 60) ]);
my $handed = OsagoStack::intake_entry($r);
ok(calls_out($handed), 'another executor\'s calls out');
$proxy->reset;
$quiet->stop;
my ($released) = grep { ($_->{event} // "") eq 'tasks_released' } @{ $quiet->log_lines };
like($released->{msg} // '', qr/^2 of 2 unfinished tasks handed back/,
     'stopped after its connection broke unnoticed: both calls handed back on a new one');
is(scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id = '$handed'"
                    . " AND status = 'pending'"), scalar @CODES, '  (pending in PostgreSQL)');
my $direct = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                     name => 'unreach-direct', roles => 'executor');
ok(OsagoStack::wait_completed($pg, [$handed], 30),
   '  and the next executor completes them at once (redelivered, not left to the sweeper)');

is(OsagoStack::metric_of($front->metrics, 'tasks_swept'), 0, 'no task swept');
OsagoStack::check_all_done($pg, $r, [$first, $id, $last, $handed], \@CODES);
$direct->stop;
$front->stop;
$proxy->stop;
$silent->stop;

done_testing;
