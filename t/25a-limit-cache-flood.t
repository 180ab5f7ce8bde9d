#!/usr/bin/perl
# A flood of keys that name no partner must not push the real partners' contracts out of the
# worker's cache (osago_partner_cache_size): the cached contract is what the local fallback
# enforces while Redis is away, and a partner it has never seen gets 503 then. Here the cache
# holds 16 entries and 200 unknown keys arrive after a partner's last request; Redis then stops,
# and the partner is still served, under its own contract.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use OsagoTest;

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 1, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_redis_timeout 200ms;
    osago_partner_cache_size 16;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Partner "$osago_partner" always;
        add_header X-Limit-Status "$osago_limit_status" always;
        location / { osago_limit on; osago_limit_fallback local; osago_limit_edges 1; empty_gif; }
    }
HTTP
# rate 1/s: the 61 requests below exceed the burst however slowly they go
my $P = OsagoTest::add_partner($r, name => 'steady', rate => 1, burst => 50);

sub get {
    my ($key) = @_;
    return OsagoTest::http(GET => $n->url('/'), timeout => 5, headers => { 'X-API-Key' => $key });
}
sub hdr { my $v = $_[0]{headers}{ lc $_[1] }; ref $v ? $v->[0] : $v }

my $res = get($P);
is($res->{status}, 200, 'the partner: 200');
is(hdr($res, 'x-partner'), 'steady', '  by name');

my %flood;
$flood{ get(OsagoTest::random_key())->{status} }++ for 1 .. 200;
is_deeply(\%flood, { 401 => 200 }, '200 unknown keys, 12 times the cache: 401 each');

$r->stop;
$res = get($P);
is($res->{status}, 200, 'Redis stopped: the partner is still served from its cached contract')
    or diag explain $res;
is(hdr($res, 'x-partner'), 'steady', '  by name');
is(hdr($res, 'x-limit-status'), 'fallback_allowed', '  by the local fallback');
my @st = map { get($P)->{status} } 1 .. 60;
my $over = grep { $_ == 429 } @st;
ok($over >= 5, "  under its contract (burst 50): $over of 60 more requests 429")
    or diag "@st";
is(get(OsagoTest::random_key())->{status}, 503, 'a key never seen here: 503, as documented');
done_testing;
