#!/usr/bin/perl
# The worker's /healthz, /readyz and /metrics answer when its sockets are numbered above 1,024,
# as they are under load (a connection per insurer call in flight). The worker is started with
# 1,100 inherited descriptors, so every socket it opens afterwards is numbered above them; a
# select()-based HTTP server cannot watch those and answered nothing (seen during the
# benchmark: "Empty reply from server" for as long as the load lasted).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $HELD = 1100;
chomp(my $limit = `sh -c 'ulimit -n'`);
# make test raises the soft limit to the hard one; below this, the test cannot hold its sockets
plan skip_all => "needs an open-file limit above " . ($HELD + 200) . " (ulimit -n is $limit)"
    if $limit ne 'unlimited' && $limit < $HELD + 200;

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => [qw(alfa reso)], latency => '10-20');

my $w;
{
    # handles opened while $^F is this high are not close-on-exec: the worker inherits them
    local $^F = 1_000_000;
    my @held;
    for (1 .. $HELD) {
        open(my $fh, '<', '/dev/null') or BAIL_OUT("open /dev/null: $!");
        push @held, $fh;
    }
    cmp_ok(fileno($held[-1]), '>', 1024, 'the last inherited descriptor is above 1024');
    $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                 migrate => 1, name => 'fds-1', wait => 0);
    close $_ for @held;
}

ok(OsagoStack::wait_until(sub { $w->healthz == 200 }, 20, 0.2), '/healthz 200');
my $fds = () = glob("/proc/" . $w->pid . "/fd/*");
cmp_ok($fds, '>', $HELD, "the worker holds more than $HELD descriptors ($fds)");
ok(OsagoStack::wait_until(sub { $w->readyz == 200 }, 20, 0.2), '/readyz 200');
my $m = $w->metrics;
ok(scalar(keys %$m), '/metrics answers') or diag $w->metrics_text;
ok(defined $w->metric('calls_in_flight', from => $m), 'and carries the worker\'s gauges');

$w->stop;
done_testing;
