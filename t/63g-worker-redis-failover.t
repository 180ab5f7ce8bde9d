#!/usr/bin/perl
# A Redis failover behind the worker's address (a virtual IP, a proxy, a DNS name): the primary
# becomes a replica of its standby, and the address now leads to the standby. The worker's open
# connections still reach the old node, which refuses every write with READONLY (XREADGROUP,
# XACK, the read model's script); only a new connection reaches the new primary. The worker
# drops a connection that answers READONLY, as the edge does (t/44a), and goes on: the next
# application is relayed from the new primary and its read model written there. A relay that
# starts while the address still leads to the replica reaches the primary as soon as it moves.
# Before, the relay and results retried on the replica for as long as the worker ran.
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
my $old = OsagoTest::Redis->new;
my $new = OsagoTest::Redis->new;
OsagoStack::replicate($new, $old);
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '50-100');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

my $vip = OsagoStack::TcpProxy->new(to => $old->port);
my $w = OsagoStack::Worker->new(pg => $pg, redis => '127.0.0.1:' . $vip->port, kafka => $kb,
                                insurers => $sim, name => 'failover');

my $first = OsagoStack::intake_entry($old);
ok(OsagoStack::wait_completed($pg, [$first], 30), 'before the failover: an application completes');
ok(OsagoStack::wait_until(sub {
       ((OsagoStack::read_model($new, $first)->{doc} || {})->{status} // '') eq 'completed' },
       10, 0.05),
   '  and its read model reached the standby');

is($new->cli('REPLICAOF', 'NO', 'ONE'), 'OK', 'failover: the standby is the primary');
$vip->to($new->port);
is($old->cli('REPLICAOF', '127.0.0.1', $new->port), 'OK', '  the old primary follows it');

my $t0 = time;
my $second = OsagoStack::intake_entry($new);
ok(OsagoStack::wait_completed($pg, [$second], 20),
   'the next application, accepted by the new primary, completes');
ok(OsagoStack::wait_until(sub {
       ((OsagoStack::read_model($new, $second)->{doc} || {})->{status} // '') eq 'completed' },
       10, 0.05),
   sprintf('  its read model is on the new primary, %.1f s after it was accepted', time - $t0));
is(OsagoStack::pending_count($new), 0, '  and its intake entry is acknowledged there');
my @left = grep { ($_->{event} // '') eq 'redis_reconnect' && ($_->{msg} // '') =~ /READONLY/ }
           @{ $w->log_lines };
ok(@left >= 1, sprintf('the worker left the replica (%d connections, logged)', scalar @left))
    or diag substr($w->log_text, -3000);
$w->stop;

# --- a relay that comes up against the replica (an address not moved yet, a stale DNS answer) ---
$vip->to($old->port);
my $rest = OsagoStack::Worker->new(pg => $pg, redis => $new, kafka => $kb, insurers => $sim,
                                   name => 'direct-rest',
                                   roles => 'orchestrator,executor,results,sweeper');
my $late = OsagoStack::Worker->new(pg => $pg, redis => '127.0.0.1:' . $vip->port, kafka => $kb,
                                   insurers => $sim, name => 'late-relay', roles => 'relay');
my $third = OsagoStack::intake_entry($new);
ok(OsagoStack::wait_until(sub {
       grep { ($_->{event} // '') eq 'redis_error' && ($_->{msg} // '') =~ /READONLY/ }
       @{ $late->log_lines } }, 10, 0.1),
   'a relay connected to the replica is refused (READONLY)');
sleep 1;
is(scalar $pg->psql("SELECT count(*) FROM applications WHERE id = '$third'"), 0,
   '  and cannot take the new application');
$vip->to($new->port);
ok(OsagoStack::wait_completed($pg, [$third], 20),
   'once the address leads to the primary, its next connection relays it');
OsagoStack::check_all_done($pg, $new, [ $first, $second, $third ], \@CODES);

$_->stop for $late, $rest;
$vip->stop;

done_testing;
