#!/usr/bin/perl
# API keys are free to make up, and each key a worker holds nothing for costs the shared Redis a
# lookup: osago_partner_lookup_rate caps those lookups per worker (here 20 a second, as many at
# once). Past it a new key gets 503 limiter-unavailable with Retry-After, and Redis is not asked;
# partners the worker knows are served throughout, and a new partner gets in once the bucket
# has refilled.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;

my $RATE = 20;
my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 1, http => <<"HTTP");
    osago_redis_server %%REDIS%%;
    osago_partner_cache_ttl 60s;
    osago_partner_lookup_rate $RATE;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Limit-Status "\$osago_limit_status" always;
        location / { osago_limit on; empty_gif; }
        location = /metrics { osago_metrics; }
    }
HTTP

sub get {
    my ($key) = @_;
    return OsagoTest::http(GET => $n->url('/'), timeout => 5, headers => { 'X-API-Key' => $key });
}
sub lookups {
    my %calls = map { /^cmdstat_(evalsha|eval):calls=(\d+)/ ? ($1 => $2) : () }
                split /\r?\n/, scalar $r->cli('INFO', 'commandstats');
    return ($calls{evalsha} // 0) + ($calls{eval} // 0);
}
sub busy_count {
    my $m = OsagoTest::prom_parse(OsagoTest::http(GET => $n->url('/metrics'))->{content});
    return OsagoTest::prom_sum($m, 'osago_limit_decisions_total', outcome => 'busy') // -1;
}

my $steady = OsagoTest::add_partner($r, name => 'steady', rate => 1000, burst => 1000);
is(get($steady)->{status}, 200, 'a partner, now known to the worker');
sleep 1.1;    # the lookup above refilled

my $calls0 = lookups();
my $t0 = time;
my (%status, @steady, $busy);
for my $i (1 .. 200) {
    my $res = get(OsagoTest::random_key());
    $status{ $res->{status} }++;
    $busy //= $res if $res->{status} == 503;
    push @steady, get($steady)->{status} if $i % 20 == 0;
}
my $took = time - $t0;
my $looked_up = lookups() - $calls0 - @steady;
my $allowed = $RATE + $RATE * $took;
diag sprintf '200 new keys in %.2f s: %s; %d lookups in Redis', $took,
             join(', ', map { "$_ x$status{$_}" } sort keys %status), $looked_up;

cmp_ok($status{401} // 0, '>=', $RATE, "at least the bucket's $RATE new keys were looked up (401)");
cmp_ok($status{401} // 0, '<=', $allowed + 1, sprintf('at most %.0f: the bucket and its refill', $allowed));
is(($status{401} // 0) + ($status{503} // 0), 200, 'every other one: 503');
cmp_ok($looked_up, '<=', $allowed + 1, 'Redis was asked only for the keys looked up');
is($busy->{status}, 503, '503 for a key past the budget');
is(OsagoTest::problem($busy)->{type}, 'urn:osago:problem:limiter-unavailable', '  limiter-unavailable');
like(OsagoTest::problem($busy)->{detail} // '', qr/new to this server/, '  saying why');
is($busy->{headers}{'retry-after'}, 1, '  Retry-After: 1');
is($busy->{headers}{'x-limit-status'}, 'busy', '  $osago_limit_status busy');
is(busy_count(), $status{503} // 0, 'osago_limit_decisions_total{outcome="busy"} counts them');
is_deeply(\@steady, [ (200) x 10 ], 'the known partner was served throughout');

sleep 1.1;
my $late = OsagoTest::add_partner($r, name => 'late', rate => 10, burst => 10);
is(get($late)->{status}, 200, 'a new partner, once the bucket refilled: 200');
unlike($n->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no alerts in error.log');

done_testing;
