#!/usr/bin/perl
# osago-worker's kept-alive insurer connections: idle ones stay in the executor's epoll set
# between calls (no epoll_ctl per call). When the insurers go away and come back on the same
# port, every idle connection is closed under the worker: the executor must drop those sockets
# from its set (not spin on their hangup), and the next calls must go out on new connections,
# each quote at its first attempt.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use POSIX ();
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $T0 = time;
my @CODES = qw(alfa ingos reso);

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '20-50');
my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                migrate => 1, name => 'keepalive-1');

sub batch { map { scalar OsagoStack::intake_entry($r) } 1 .. $_[0] }

# the worker's CPU seconds so far (user + system)
sub cpu_s {
    my @f = split ' ', OsagoTest::_slurp('/proc/' . $w->pid . '/stat') =~ s/^.*\) //sr;
    return ($f[11] + $f[12]) / POSIX::sysconf(POSIX::_SC_CLK_TCK());
}

my @first = batch(10);
ok(OsagoStack::wait_completed($pg, \@first, 60), 'the first applications complete');
my $port = $sim->port;
my $sockets = () = grep { /^\s*\d+:\s+0100007F:\w+\s+0100007F:\Q${\ sprintf '%04X', $port}\E\s+01\s/ }
    split /\n/, OsagoTest::_slurp('/proc/net/tcp');
ok($sockets > 0, "the executor keeps connections to the insurers ($sockets established)");

$sim->stop;
my $cpu0 = cpu_s();
my $t = time;
sleep 2;
my $idle = cpu_s() - $cpu0;
ok($idle < 0.5 * (time - $t),
   sprintf('insurers gone: the worker idles (%.2f CPU s in %.1f s), no spin on closed sockets',
           $idle, time - $t));

$sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '20-50', port => $port);
$t = time;
my @second = batch(10);
ok(OsagoStack::wait_completed($pg, \@second, 30),
   sprintf('insurers back on the same port: the next applications complete (%.1f s)', time - $t));

my $q = OsagoStack::quotes_of($pg, [ @first, @second ]);
my @bad = map { my $id = $_; map { "$id/$_" } grep {
              ($q->{$id}{$_}{status} // '') ne 'ok' || ($q->{$id}{$_}{attempt} // 0) != 1 } @CODES
          } @first, @second;
is(scalar @bad, 0, 'every quote ok at its first attempt: closed connections were never used')
    or diag explain \@bad;
unlike($w->log_text, qr/"event":"(?:epoll_error|insurer_error)"/, 'no epoll or insurer errors logged');
$w->stop;
diag sprintf 'took %.1f s', time - $T0;
done_testing;
