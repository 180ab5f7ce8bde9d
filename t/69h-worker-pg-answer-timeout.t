#!/usr/bin/perl
# A PostgreSQL that hangs (its kernel still acknowledges, so keepalives never end the wait: a
# server stuck on its storage, a primary frozen while a standby takes over) must not hold the
# roles for ever. The conninfo lists two addresses: a proxy in front of PostgreSQL first, then
# PostgreSQL itself (a standby list). The roles connect through the proxy; it stalls, keeping
# their connections open and answering nothing, and takes new connections without a word. Each
# role gives its statement up after --pg-answer-timeout-ms (3 s here), connects again, gives the
# silent first address its connect_timeout, and goes on through the second: the application
# injected during the stall completes, each insurer called once. Before, every role waited on
# the stalled connection for as long as the worker ran. Then a PostgreSQL that is alive but
# holds a lock longer than the answer timeout cancels the statement itself (statement_timeout),
# and the role retries on the same connection; before, there was no limit of either kind.
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
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '50-100');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

my $proxy = OsagoStack::TcpProxy->new(to => $pg->port);
(my $list = $proxy->conninfo($pg, connect_timeout => 2))
    =~ s/\bhost=\S+ port=(\d+)/host=127.0.0.1,127.0.0.1 port=$1,@{[ $pg->port ]}/;
like($list, qr/port=\d+,\d+/, "the conninfo lists the proxy, then PostgreSQL: $list");

my %common = (redis => $r, kafka => $kb, insurers => $sim);
my $front = OsagoStack::Worker->new(
    %common, pg => $list, name => 'answer-front', roles => 'relay,orchestrator,results,sweeper',
    args => [ OsagoStack::worker_flags(pg_answer_timeout_ms => 3000, sweep_interval_s => 1) ]);
my $executor = OsagoStack::Worker->new(%common, pg => $pg, name => 'answer-executor',
                                       roles => 'executor');

my $warm = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_completed($pg, [$warm], 60), 'through the proxy: an application completes');

$proxy->stall;
my $stalled_at = scalar @{ $front->log_lines };
my $t0 = time;
my $id = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_completed($pg, [$id], 60), 'an application injected during the stall completes');
my $took = time - $t0;
# the relay's insert: 3 s unanswered, then the proxy's 2-s connect timeout; the same again for
# the orchestrator and results, each on its own connection, in turn
cmp_ok($took, '<', 40, sprintf('  in %.1f s (answer timeout 3 s, connect timeout 2 s)', $took));

my @lines = @{ $front->log_lines };
my %gave_up;
for (@lines[ $stalled_at .. $#lines ]) {
    $gave_up{ $_->{role} }++ if ($_->{event} // '') eq 'pg_abandoned' && ($_->{msg} // '') =~ /^out of time/;
}
ok($gave_up{$_}, "  $_ gave a statement up, out of time") for qw(relay orchestrator);
ok($gave_up{results} || $gave_up{read_model}, '  results gave a statement up, out of time')
    or diag join "\n", map { "$_ $gave_up{$_}" } sort keys %gave_up;
ok((grep { ($_->{event} // '') eq 'pg_connect_failed' && ($_->{msg} // '') =~ /within the connect timeout/ }
        @lines[ $stalled_at .. $#lines ]),
   '  and connected again past the silent address');

# A PostgreSQL that is alive but where a statement waits longer than the role would (a lock held
# for 20 s): PostgreSQL cancels it itself (statement_timeout, set from the same option), so the
# role retries on its connection rather than give it up and leave a backend waiting behind.
$proxy->stop;     # and with it the connections it held: their backends end
ok(OsagoStack::wait_until(sub { $pg->psql("SELECT count(*) FROM pg_stat_activity"
                                          . " WHERE application_name = 'osago-worker-results'") == 1 },
                          10, 0.1), 'one results backend once the stalled proxy is gone');
# The executor stops first, so that this application's results come only once its row is locked.
my $calls = OsagoStack::metric_of($executor->metrics, 'insurer_calls');
is($calls, 2 * @CODES, 'each insurer called once per application so far');
$executor->stop;
my $slow = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_until(sub { ($pg->psql("SELECT status FROM applications WHERE id = '$slow'") // '')
                                    eq 'in_progress' }, 30, 0.05), 'another application started');
my $locked_at = scalar @{ $front->log_lines };
# long enough for the new executor's join (a few seconds on the mock), its calls, and a cancel
ok($pg->hold_lock("id = '$slow'", 20, 'applications'), '  its row locked for 20 s by another session');
my $t1 = time;
my $executor2 = OsagoStack::Worker->new(%common, pg => $pg, name => 'answer-executor-2',
                                        roles => 'executor');
my $waiting = sub {
    scalar $pg->psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                     . " AND application_name LIKE 'osago-worker-%'")
};
ok(OsagoStack::wait_until(sub { $waiting->() >= 1 }, 14, 0.05), '  results waits on the lock');
sleep 4.5;        # past the 3 s of statement_timeout and the second after it
cmp_ok($waiting->(), '<=', 1, '  4.5 s later no more than one statement of the worker waits on it');
ok(OsagoStack::wait_completed($pg, [$slow], 30), '  it completes once the lock is gone');
cmp_ok(time - $t1, '>=', 18, sprintf('  (after %.1f s)', time - $t1));
@lines = @{ $front->log_lines };
my @since = @lines[ $locked_at .. $#lines ];
ok((grep { ($_->{event} // '') eq 'pg_error' && ($_->{msg} // '') =~ /57014/ } @since),
   '  results\' statement was cancelled by PostgreSQL (SQLSTATE 57014: statement_timeout)')
    or diag join "\n", map { "$_->{role} $_->{event} $_->{msg}" } grep { $_->{level} ne 'debug' } @since;
is(scalar(grep { ($_->{event} // '') eq 'pg_abandoned' } @since), 0,
   '  and none given up: the connection kept');
is(scalar $pg->psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'osago-worker-results'"),
   1, '  one results backend, none left waiting behind');

is(OsagoStack::metric_of($executor2->metrics, 'insurer_calls'), scalar @CODES,
   'each insurer called once for it');
OsagoStack::check_all_done($pg, $r, [ $warm, $id, $slow ], \@CODES);

$_->stop for $front, $executor2;

done_testing;
