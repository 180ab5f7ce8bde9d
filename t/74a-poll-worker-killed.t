#!/usr/bin/perl
# A worker killed with requests parked (a crash, SIGKILL) never unparks them: the gauges
# osago_poll_parked and osago_poll_ids must not go on counting them. Each worker counts in its
# own slot of the zone, and /metrics sums the slots of live processes; the worker the master
# starts in the dead one's place parks and counts as before.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake qw(:all);
use OsagoPoll qw(:all);

my $r = OsagoTest::Redis->new;
my $KEY = OsagoTest::add_partner($r, name => 'acme', rate => 1000000, burst => 1000000);
my $n = OsagoTest::Nginx->new(redis => $r, workers => 1, http => poll_http(timeout => '30s'));
my $ids = sub { OsagoTest::prom_sum(poll_metrics($n), 'osago_poll_ids') // -1 };

my @apps = map { uuid4() } 1 .. 2;
put_app($r, $_, updated_at => 1000) for @apps;
my $victim;
OsagoTest::wait_for(sub { ($victim) = $n->worker_pids; $victim }, 5);
# a kill of pid 0 would reach this test's whole process group
die "no nginx worker process found\n" unless $victim;
ok($victim, "one worker (pid $victim)");

my @reqs = map { { path => poll_path($apps[$_ % 2], latest => 1000), key => $KEY } } 1 .. 6;
my ($parked_before, $ids_before, $killed);
many(port => $n->port, requests => \@reqs, timeout => 10, actions => [ when_parked($n, 6, sub {
    my (undef, undef, $p) = @_;
    $parked_before = $p;
    $ids_before = $ids->();
    $killed = kill 'KILL', $victim;
    return;
}) ]);
is($parked_before, 6, 'six requests parked');
is($ids_before, 2, '  on two ids');
ok($killed, 'their worker killed (SIGKILL)');
is(scalar(grep { $_->{status} == 599 || !$_->{status} } @reqs), 6,
   '  their connections went with it, unanswered');

my $successor;
ok(OsagoTest::wait_for(sub { ($successor) = grep { $_ != $victim } $n->worker_pids; $successor },
                       5),
   'the master started another worker');
ok(OsagoTest::wait_for(sub { parked($n) == 0 && $ids->() == 0 }, 5),
   'osago_poll_parked and osago_poll_ids went back to 0')
    or diag sprintf 'parked %s, ids %s', parked($n), $ids->();

# the new worker counts its own
my @q = map { { path => poll_path($apps[0], latest => 1000), key => $KEY } } 1 .. 3;
my ($parked_now, $ids_now);
many(port => $n->port, requests => \@q, timeout => 10, actions => [ when_parked($n, 3, sub {
    $parked_now = $_[2];
    $ids_now = $ids->();
    put_app($r, $apps[0], updated_at => 2000);
    publish($r, $apps[0], 2000);
    return;
}) ]);
is($parked_now, 3, 'the new worker parks three requests, and counts them');
is($ids_now, 1, '  on one id');
is(scalar(grep { $_->{status} == 200 } @q), 3, '  all three woken by the change');
ok(OsagoTest::wait_for(sub { parked($n) == 0 && $ids->() == 0 }, 3), '  and both gauges back at 0');

$n->stop;
done_testing;
