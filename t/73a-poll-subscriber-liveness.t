#!/usr/bin/perl
# The subscriber connection (pub/sub, read-only) against a Redis that is gone or refuses it:
#   - every connection of the workers to Redis has TCP keepalive on, so a host that vanished
#     without closing (crash, moved address, a NAT that forgot the flow) is noticed: the
#     subscriber sends nothing that would find out otherwise;
#   - a Redis that accepts and then refuses the subscription (here: a password the edge lacks;
#     maxclients behaves alike) is retried with a growing backoff, not every 50 ms;
#   - once Redis takes it again, the subscription comes back within the backoff's cap.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoPoll qw(:all);

my $T0 = time;
my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => poll_http(timeout => '5s'));
my @W = $n->worker_pids;

sub subscribed { OsagoTest::prom_sum(poll_metrics($n), 'osago_poll_subscribed') // -1 }

ok(OsagoTest::wait_for(sub { subscribed() == 2 }, 10), 'both workers subscribed');

# --- keepalive on every connection of the workers to Redis ----------------------------------------
{
    my $port = $r->port;
    my @lines = grep { /:$port\s/ } split /\n/, `ss -tnpo state established 2>/dev/null`;
    my %w = map { $_ => 1 } @W;
    my @ours = grep { my ($p) = /pid=(\d+)/; defined $p && $w{$p} } @lines;
    # per worker: the command connection and the subscriber
    cmp_ok(scalar @ours, '>=', 4, 'ss lists the workers\' connections to Redis')
        or diag join "\n", @lines;
    my @without = grep { !/timer:\(keepalive/ } @ours;
    ok(@ours && !@without, 'each has a keepalive timer') or diag join "\n", @without;
}

# --- refused: the backoff grows -------------------------------------------------------------------
my $from = length $n->error_log;
$r->cli('CONFIG', 'SET', 'requirepass', 'not-the-edges');
$r->{opt}{password} = 'not-the-edges';
$r->cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
my $t_refused = time;
ok(OsagoTest::wait_for(sub { subscribed() == 0 }, 5), 'the subscription is lost');
OsagoTest::sleep_until($t_refused + 3.5);

my %attempts;
for my $l (split /\n/, substr($n->error_log, $from)) {
    $attempts{$1}++ if $l =~ /\b(\d+)#\d+: osago redis: connected to .*\(subscriber\)/;
}
for my $pid (@W) {
    my $a = $attempts{$pid} // 0;
    # 50, 100, 200, 400, 800, then 1000 ms: about six in 3.5 s (every 50 ms would be ~60)
    ok($a >= 3 && $a <= 12, "worker $pid: $a subscriber attempts in 3.5 s, backing off");
}
is(subscribed(), 0, 'not subscribed while refused');

# --- taken again: subscribed within the backoff's cap ---------------------------------------------
$r->cli('CONFIG', 'SET', 'requirepass', '');
delete $r->{opt}{password};
my $t_back = time;
ok(OsagoTest::wait_for(sub { subscribed() == 2 }, 5), 'both workers subscribed again');
cmp_ok(time - $t_back, '<', 2.5, 'within the 1 s backoff cap (and a metrics scrape)');

# the later reconnects start from the short backoff again: the confirmation reset it
$from = length $n->error_log;
$r->cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
my $t_kill = time;
my $resubscribed = sub { my @s = substr($n->error_log, $from) =~ /osago redis: subscribed to/g; @s };
ok(OsagoTest::wait_for(sub { $resubscribed->() >= 2 }, 5), 'both subscribed again after a kill');
cmp_ok(time - $t_kill, '<', 1.0, 'at once, not after the cap');

diag sprintf 'took %.1f s', time - $T0;
done_testing;
