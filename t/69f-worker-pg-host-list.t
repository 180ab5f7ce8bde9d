#!/usr/bin/perl
# A conninfo that lists several PostgreSQL addresses (host=a,b,c: a standby list, with
# target_session_attrs in real life), of which the first is a socket directory that does not
# exist, the second refuses connections and the third takes them and never answers (a host gone
# from the network, packets dropped). Every role connects without blocking, where libpq never
# leaves an address that does not answer: each gives the silent address its connect_timeout,
# once, and starts its next attempt past it (the executor in its loop, the others in
# pg_connect), and /readyz connects to every address at once. Before, the executor started every
# attempt at the first address again and waited on the second for ever: it never connected; it
# tried the silent address twice once that was mended; and /readyz failed.
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

my $refused = OsagoTest::free_port();
my $silent = OsagoStack::TcpProxy->new(to => $pg->port);
$silent->hang;
# a socket directory that does not exist first: libpq passes it within the connect's first step
(my $list = $pg->conninfo) =~ s/\bhost=\S+ port=\d+/host=\/nonexistent-osago,127.0.0.1,127.0.0.1,127.0.0.1 port=5432,$refused,@{[ $silent->port ]},@{[ $pg->port ]}/;
like($list, qr/port=\d+,\d+,\d+,\d+/, "the conninfo lists four addresses: $list");

my $front = OsagoStack::Worker->new(pg => $list, redis => $r, kafka => $kb, insurers => $sim,
                                    name => 'list-front', roles => 'relay,orchestrator,results,sweeper',
                                    args => [ '--log-level', 'debug' ]);   # every failure logged
my $exec = OsagoStack::Worker->new(pg => $list, redis => $r, kafka => $kb, insurers => $sim,
                                   name => 'list-exec', roles => 'executor');

my $t0 = time;
my $id = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_completed($pg, [$id], 30), 'an application completes through the list');
my $took = time - $t0;
# each role: the second address's 2 s; the executor then its 1-s retry
cmp_ok($took, '<', 15, sprintf('  in %.1f s (connect_timeout is 2 s)', $took));
ok($silent->held >= 2, sprintf('  the silent address was tried (%d connections held)', $silent->held));
my @log = @{ $exec->log_lines };
ok((grep { ($_->{event} // '') eq 'pg_connect_failed'
           && ($_->{msg} // '') =~ /no connection within the connect timeout/ } @log),
   '  the executor gave the silent address up') or diag substr($exec->log_text, -3000);
ok((grep { ($_->{event} // '') eq 'pg_connected' } @log), '  and connected further along the list');
is(scalar(grep { ($_->{event} // '') eq 'pg_connect_failed' && ($_->{msg} // '') =~ /connect timeout/ } @log),
   1, '  after one timeout: its next attempt started past the silent address');
my $silent_port = $silent->port;
my %gave_up;
for (@{ $front->log_lines }) {
    $gave_up{ $_->{role} }++ if ($_->{event} // '') eq 'pg_connect_failed'
                               && ($_->{msg} // '') =~ /no answer from 127\.0\.0\.1 port $silent_port within/;
}
ok(%gave_up, '  the other roles gave the silent address up: ' . join(', ', sort keys %gave_up))
    or diag substr($front->log_text, -3000);
is_deeply([ grep { $gave_up{$_} > 1 } sort keys %gave_up ], [], '  each of them once');
OsagoStack::check_all_done($pg, $r, [$id], \@CODES);

# /readyz connects to every address at once: the silent one does not fail the probe
my $t1 = time;
is($front->readyz, 200, '/readyz 200 through the list');
cmp_ok(time - $t1, '<', 1.5, sprintf('  in %.2f s (probe budget 1 s)', time - $t1));

# A connection lost while PostgreSQL stays up (terminated, a proxy or pooler restarted): each
# role connects again where its last connection was, past the silent address ahead of it in the
# list. Before, every role but the executor started at the first address again and gave the
# silent one its connect timeout once more, on every reconnect.
my @roles = qw(relay orchestrator results executor);
my $ended = $pg->psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                      . " WHERE application_name IN ("
                      . join(',', map { "'osago-worker-$_'" } @roles) . ")", user => 'postgres');
cmp_ok($ended // 0, '>=', 4, "the roles' connections terminated ($ended)");
my $t2 = time;
my $id2 = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_completed($pg, [$id2], 30), 'an application injected after that completes');
my $took2 = time - $t2;
my %again;
for my $w ($front, $exec) {
    for (@{ $w->log_lines }) {
        my $e = $_->{event} // '';
        $again{ $_->{role} }{reconnect}++ if $e eq 'pg_reconnect' || $e eq 'pg_connected';
        $again{ $_->{role} }{silent}++
            if $e eq 'pg_connect_failed' && ($_->{msg} // '') =~ /connect timeout/;
    }
}
for my $role (@roles) {
    ok($again{$role}{reconnect}, "  $role connected again");
    is($again{$role}{silent} // 0, 1, "  $role gave the silent address its timeout once in all")
        or diag join("\n", map { "$_->{event}: " . ($_->{msg} // '') }
                     grep { ($_->{role} // '') eq $role && ($_->{event} // '') =~ /^pg_/ }
                     @{ $role eq 'executor' ? $exec->log_lines : $front->log_lines });
}
cmp_ok($took2, '<', 10, sprintf('  in %.1f s', $took2));
OsagoStack::check_all_done($pg, $r, [$id, $id2], \@CODES);

$exec->stop;
$front->stop;
$silent->stop;

done_testing;
