#!/usr/bin/perl
# A Redis failover that loses the primary's last writes: Redis acknowledges a write before its
# replica has it, so when the primary dies and the replica is promoted, the read models written
# last are gone. For an application that completed, nothing would write it again (no result is
# left to deliver; the sweeper leaves completed applications alone), and the edge would show it
# unfinished for the read model's 7 days. The worker notices the connection it lost (an idle
# results role asks Redis now and then), and on the new connection writes again, where Redis is
# behind PostgreSQL, the read models of the applications it completed lately, each with its
# PUBLISH; the others are left as they are. Then the same with the primary demoted, not killed.
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
# the replication link goes through a proxy that can stop forwarding: a link that lags
my $link = OsagoStack::TcpProxy->new(to => $old->port);
OsagoStack::replicate($new, $old, port => $link->port);
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '20-50');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

my $vip = OsagoStack::TcpProxy->new(to => $old->port);
my $w = OsagoStack::Worker->new(pg => $pg, redis => '127.0.0.1:' . $vip->port, kafka => $kb,
                                insurers => $sim, name => 'lost-writes');
my $status_on = sub { ((OsagoStack::read_model($_[0], $_[1])->{doc} || {})->{status} // '') };

my $first = OsagoStack::intake_entry($old);
ok(OsagoStack::wait_completed($pg, [$first], 30), 'an application completes');
ok(OsagoStack::wait_until(sub { $status_on->($new, $first) eq 'completed' }, 10, 0.05),
   '  and its read model reaches the standby');

# The standby's link stops forwarding (it lags), and three more complete.
$link->stall;
my @lost = map { scalar OsagoStack::intake_entry($old) } 1 .. 3;
ok(OsagoStack::wait_completed($pg, \@lost, 30), 'three more complete while the standby lags');
ok(OsagoStack::wait_until(sub { !grep { $status_on->($old, $_) ne 'completed' } @lost }, 10, 0.05),
   '  their read models are on the primary');

# The primary dies before the standby had them; the standby is promoted behind the same address.
kill 'KILL', $old->pid or die "SIGKILL: $!";
$link->stop;
is($new->cli('REPLICAOF', 'NO', 'ONE'), 'OK', 'failover: the standby is the primary');
is(scalar(grep { $status_on->($new, $_) eq 'completed' } @lost), 0,
   '  without the three completed read models');
my $sub = OsagoStack::RedisWatch->new($new, 'SUBSCRIBE', 'osago:app-updates');
$vip->to($new->port);
$vip->reset;
my $t0 = time;

ok(OsagoStack::wait_until(sub { !grep { $status_on->($new, $_) ne 'completed' } @lost }, 20, 0.1),
   sprintf('the worker writes the three again on the new primary (%.1f s, no new traffic)',
           time - $t0))
    or diag substr($w->log_text, -3000);
ok(OsagoStack::wait_until(sub { @{ $sub->messages } >= 3 }, 5, 0.05), '  with a PUBLISH each');
my %published = map { (split / /, $_->[1])[0] => 1 } @{ $sub->messages };
is_deeply([ sort keys %published ], [ sort @lost ], '  for exactly those three (the first was current)');
my ($said) = grep { ($_->{event} // '') eq 'read_model_reasserted' } @{ $w->log_lines };
like($said->{msg} // '', qr/lost the read models of 3 of the 4 applications completed lately/,
     '  and says so in its log') or diag explain $said;

my $next = OsagoStack::intake_entry($new);
ok(OsagoStack::wait_completed($pg, [$next], 30), 'the next application completes on the new primary');
OsagoStack::check_all_done($pg, $new, [ $first, @lost, $next ], \@CODES);
$sub->stop;

# --- the primary demoted rather than killed: its connections stay open and answer reads ----------
# A third node replicates the primary through a link that lags; two more complete; the third is
# promoted and the old primary made its replica (a resync that drops what the third lacks). The
# worker's idle connections still reach the demoted node; ROLE tells it so.
my $third = OsagoTest::Redis->new;
my $link2 = OsagoStack::TcpProxy->new(to => $new->port);
OsagoStack::replicate($third, $new, port => $link2->port,
                      what => 'a third node replicates the primary');
ok(OsagoStack::wait_until(sub { $status_on->($third, $next) eq 'completed' }, 10, 0.05),
   '  and has caught up');
$link2->stall;
my @lost2 = map { scalar OsagoStack::intake_entry($new) } 1 .. 2;
ok(OsagoStack::wait_completed($pg, \@lost2, 30), 'two more complete while its link lags');
ok(OsagoStack::wait_until(sub { !grep { $status_on->($new, $_) ne 'completed' } @lost2 }, 10, 0.05),
   '  their read models are on the primary');
sleep 0.5;    # the worker idle: nothing but its own checks goes to Redis from here
is($third->cli('REPLICAOF', 'NO', 'ONE'), 'OK', 'failover: the third node is the primary');
$link2->stop;
is($new->cli('REPLICAOF', '127.0.0.1', $third->port), 'OK', '  the old primary is its replica');
$vip->to($third->port);    # connections open stay on the demoted node
$t0 = time;
ok(OsagoStack::wait_until(sub { !grep { $status_on->($third, $_) ne 'completed' } @lost2 }, 20, 0.1),
   sprintf('the worker leaves the demoted node and writes the two again (%.1f s, no new traffic)',
           time - $t0))
    or diag substr($w->log_text, -3000);
ok(scalar(grep { ($_->{event} // '') eq 'redis_reconnect' && ($_->{msg} // '') =~ /\(ROLE\)/ }
          @{ $w->log_lines }),
   '  having asked it its role') or diag substr($w->log_text, -3000);

$w->stop;
$vip->stop;

done_testing;
