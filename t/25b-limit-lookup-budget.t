#!/usr/bin/perl
# API keys are free to make up, and each key that names no partner the worker knows costs the
# shared Redis a lookup: osago_partner_lookup_rate caps those lookups per worker (here 5 a
# second, as many at once).
#   - Past it a new key gets 503 limiter-unavailable with Retry-After, and Redis is not asked.
#   - Keys that named no partner a cache TTL ago draw from the same budget: cycling made-up keys
#     slowly, then sending them all again once stale, gains nothing.
#   - Partners the worker knows are served throughout; a new partner gets in once the bucket has
#     refilled.
#   - After a reload, with the budget spent, keys that named a partner (any worker's, remembered
#     in the shared zone) are still looked up; a key Redis no longer knows is forgotten.
#   - While Redis is away nothing is asked of it, and the budget does not apply: the `open`
#     fallback still admits every key.
#   - Lookups queued behind a worker's first connect reach Redis once it is made: they draw.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use OsagoTest;

my $RATE = 5;
my $TTL  = 1.0;
my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 1, http => <<"HTTP");
    osago_redis_server %%REDIS%%;
    osago_redis_timeout 200ms;
    osago_partner_cache_ttl ${TTL}s;
    osago_partner_lookup_rate $RATE;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Limit-Status "\$osago_limit_status" always;
        location / { osago_limit on; empty_gif; }
        location /open { osago_limit on; osago_limit_fallback open; empty_gif; }
        location = /metrics { osago_metrics; }
    }
HTTP

sub get {
    my ($key, $path) = @_;
    return OsagoTest::http(GET => $n->url($path // '/'), timeout => 5,
                           headers => { 'X-API-Key' => $key });
}
sub lookups {
    my ($redis) = @_;
    my %calls = map { /^cmdstat_(evalsha|eval):calls=(\d+)/ ? ($1 => $2) : () }
                split /\r?\n/, scalar(($redis // $r)->cli('INFO', 'commandstats'));
    return ($calls{evalsha} // 0) + ($calls{eval} // 0);
}
sub busy_count {
    my $m = OsagoTest::prom_parse(OsagoTest::http(GET => $n->url('/metrics'))->{content});
    return OsagoTest::prom_sum($m, 'osago_limit_decisions_total', outcome => 'busy') // -1;
}

my $steady = OsagoTest::add_partner($r, name => 'steady', rate => 1000, burst => 1000);
is(get($steady)->{status}, 200, 'a partner, now known to the worker');
sleep 1.1;    # the lookup above refilled

# --- a flood of new keys ----------------------------------------------------------------------------
my $calls0 = lookups();
my $t0 = time;
my (%status, @steady, $busy, $steady_calls);
for my $i (1 .. 200) {
    my $res = get(OsagoTest::random_key());
    $status{ $res->{status} }++;
    $busy //= $res if $res->{status} == 503;
    if ($i % 20 == 0) {
        my $c = lookups();
        push @steady, get($steady)->{status};
        $steady_calls += lookups() - $c;
    }
}
my $took = time - $t0;
my $looked_up = lookups() - $calls0 - $steady_calls;
my $allowed = $RATE + $RATE * $took + 1;
diag sprintf '200 new keys in %.2f s: %s; %d lookups in Redis', $took,
             join(', ', map { "$_ x$status{$_}" } sort keys %status), $looked_up;

cmp_ok($status{401} // 0, '>=', $RATE, "at least the bucket's $RATE new keys were looked up (401)");
cmp_ok($status{401} // 0, '<=', $allowed, sprintf('at most %.0f: the bucket and its refill', $allowed));
is(($status{401} // 0) + ($status{503} // 0), 200, 'every other one: 503');
cmp_ok($looked_up, '<=', $allowed, 'Redis was asked only for the keys looked up');
is($busy->{status}, 503, '503 for a key past the budget');
is(OsagoTest::problem($busy)->{type}, 'urn:osago:problem:limiter-unavailable', '  limiter-unavailable');
like(OsagoTest::problem($busy)->{detail} // '', qr/new to this server/, '  saying why');
is($busy->{headers}{'retry-after'}, 1, '  Retry-After: 1');
is($busy->{headers}{'x-limit-status'}, 'busy', '  $osago_limit_status busy');
is(busy_count(), $status{503} // 0, 'osago_limit_decisions_total{outcome="busy"} counts them');
is_deeply(\@steady, [ (200) x 10 ], 'the known partner was served throughout');

# --- made-up keys cycled: known to name no partner, then stale ---------------------------------------
# 20 keys looked up within the budget, 5 a second; once their entries are stale, all 20 at once.
my @cycled = map { OsagoTest::random_key() } 1 .. 20;
my @first;
for my $round (0 .. 3) {
    sleep 1.05;
    push @first, map { get($_)->{status} } @cycled[ 5 * $round .. 5 * $round + 4 ];
}
is_deeply(\@first, [ (401) x 20 ], '20 made-up keys, 5 a second: each looked up (401)');
sleep $TTL + 0.1;
$calls0 = lookups();
$t0 = time;
my %again;
$again{ get($_)->{status} }++ for @cycled;
$took = time - $t0;
$allowed = $RATE + $RATE * $took + 1;
my $relooked = lookups() - $calls0;
diag sprintf 'the 20 again, stale, in %.2f s: %s; %d lookups', $took,
             join(', ', map { "$_ x$again{$_}" } sort keys %again), $relooked;
cmp_ok($relooked, '<=', $allowed, sprintf('stale, all at once: at most %.0f looked up again', $allowed));
is(($again{401} // 0) + ($again{503} // 0), 20, '  the rest: 503');
is(get($steady)->{status}, 200, 'the partner, stale too, is looked up again regardless');

sleep 1.1;
my $late = OsagoTest::add_partner($r, name => 'late', rate => 10, burst => 10);
is(get($late)->{status}, 200, 'a new partner, once the bucket refilled: 200');

# --- after a reload: the zone remembers which keys named a partner ----------------------------------
# The new worker has cached no key. With its budget spent by made-up keys, the partners' keys
# are still looked up, since Redis said they name a partner; a key Redis no longer knows is
# forgotten and draws from the budget again.
$n->reload;
# The bucket refills a lookup every 200 ms: on a slow machine one may come back between the
# spending and the request that follows it, so each question is asked three times.
sub spend_budget { my %s; $s{ get(OsagoTest::random_key())->{status} }++ for 1 .. 2 * $RATE; \%s }
my (@spent, @after, @made_up);
for (1 .. 3) {
    push @spent, spend_budget();
    push @after, get($steady);
    push @made_up, get(OsagoTest::random_key())->{status};
}
ok(!grep({ !$_->{503} } @spent), 'after a reload, the new worker\'s budget spent on made-up keys, 3 times')
    or diag explain \@spent;
is_deeply([ map { $_->{status} } @after ], [ 200, 200, 200 ],
          '  a partner\'s key is still looked up each time: 200');
is_deeply([ map { $_->{headers}{'x-limit-status'} } @after ], [ ('allowed') x 3 ],
          '  and limited as usual ($osago_limit_status)');
cmp_ok(scalar(grep { $_ == 503 } @made_up), '>=', 2,
       '  while a made-up key right after it is refused (503), at least 2 times of 3')
    or diag "@made_up";

$r->cli('DEL', 'osago:partner:' . OsagoTest::key_hash($late));
is(get($late)->{status}, 401, 'a partner\'s key removed from Redis: 401 (the new worker asks)');
my @late;
for (1 .. 3) {
    sleep $TTL + 0.1;               # its entry, "no partner", goes stale
    spend_budget();
    push @late, get($late)->{status};
}
cmp_ok(scalar(grep { $_ == 503 } @late), '>=', 2,
       '  and forgotten: with the budget spent, it is refused like any other (at least 2 of 3)')
    or diag "@late";

# --- Redis away ----------------------------------------------------------------------------------------
$r->stop;
my %open;
$open{ get(OsagoTest::random_key(), '/open')->{status} }++ for 1 .. 30;
is_deeply(\%open, { 200 => 30 }, 'Redis away, fallback open: 30 new keys all admitted, none busy')
    or diag explain \%open;

unlike($n->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no alerts in error.log');
undef $n;

# --- a worker's first connect -----------------------------------------------------------------------
# Lookups queued behind it reach Redis once it is made: they draw from the budget like any other.
# Redis hangs while nginx starts; 30 made-up keys arrive at once; Redis comes back.
my $r2 = OsagoTest::Redis->new;
$r2->pause;
my $n2 = OsagoTest::Nginx->new(redis => $r2, workers => 1, http => <<"HTTP");
    osago_redis_server %%REDIS%%;
    osago_redis_connect_timeout 3s;
    osago_partner_lookup_rate $RATE;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { osago_limit on; empty_gif; }
    }
HTTP
my @socks = map {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1:' . $n2->port, Timeout => 2) or die "connect: $!";
    print {$s} "GET / HTTP/1.1\r\nHost: x\r\nX-API-Key: " . OsagoTest::random_key()
        . "\r\nConnection: close\r\n\r\n";
    $s;
} 1 .. 30;
sleep 0.5;
$r2->resume;
my %first;
for my $s (@socks) {
    local $/;
    my $x = <$s> // '';
    close $s;
    $first{ $x =~ m{^HTTP/1\.[01] (\d+)} ? $1 : 'none' }++;
}
my $asked = lookups($r2);    # a new Redis: every EVALSHA it ran is one of these lookups
# the bucket's 5, and what it refills (one per 200 ms) while the 30 arrive on a loaded machine
cmp_ok($asked, '<=', $RATE + 5, "30 made-up keys behind the first connect: Redis asked $asked times")
    or diag explain \%first;
cmp_ok($first{503} // 0, '>=', 30 - $RATE - 5, '  the others refused (503)') or diag explain \%first;

done_testing;
