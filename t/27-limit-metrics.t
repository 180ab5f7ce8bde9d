#!/usr/bin/perl
# osago_metrics: the documented series exist, add up across workers, and move.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;

my $WORKERS = 2;
my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => $WORKERS, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_redis_timeout 200ms;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            osago_limit on;
            empty_gif;
        }
        location /open {
            osago_limit on;
            osago_limit_fallback open;
            empty_gif;
        }
        location /closed {
            osago_limit on;
            osago_limit_fallback closed;
            empty_gif;
        }
        location = /metrics {
            osago_metrics;
        }
    }
HTTP

sub scrape {
    my $res = OsagoTest::http(GET => $n->url('/metrics'));
    return ($res, OsagoTest::prom_parse($res->{content}));
}
sub req {
    my ($path, $key) = @_;
    OsagoTest::http(GET => $n->url($path), headers => { defined $key ? ('X-API-Key' => $key) : () });
}
sub val { OsagoTest::prom_sum(@_) // 0 }

my $P = OsagoTest::add_partner($r, name => 'metered', rate => 1, burst => 3);
my $W = OsagoTest::add_partner($r, name => 'other', rate => 100, burst => 100);
req('/', $W) for 1 .. 6;    # workers connected and warm

my ($res, $m0) = scrape();
is($res->{status}, 200, 'metrics: 200 without an API key');
like($res->{headers}{'content-type'} // '', qr{^text/plain}, 'Prometheus text format');
ok(!defined $res->{headers}{ratelimit}, 'metrics location is not limited');
like($res->{content}, qr/^# TYPE osago_limit_decisions_total counter$/m, 'TYPE line for decisions');
like($res->{content}, qr/^# TYPE osago_redis_rtt_seconds histogram$/m, 'rtt is a histogram');
my @invalid = OsagoTest::prom_invalid_lines($res->{content});
ok(!@invalid, 'every line is valid Prometheus text format') or diag explain \@invalid;

# --- decisions move, exactly, whatever worker served them ---
my @st;
push @st, req('/', $P)->{status} for 1 .. 5;       # 3 allowed, 2 limited
push @st, req('/', undef)->{status};               # unauthorized
push @st, req('/', OsagoTest::random_key())->{status};   # unauthorized
is("@st", '200 200 200 429 429 401 401', 'the traffic: 3 allowed, 2 limited, 2 unauthorized');
my (undef, $m1) = scrape();
for ([ allowed => 3 ], [ limited => 2 ], [ unauthorized => 2 ]) {
    my ($o, $d) = @$_;
    is(val($m1, 'osago_limit_decisions_total', outcome => $o)
       - val($m0, 'osago_limit_decisions_total', outcome => $o), $d,
       "osago_limit_decisions_total{outcome=\"$o\"} +$d");
}
for ([ allowed => 3 ], [ limited => 2 ]) {
    my ($o, $d) = @$_;
    is(val($m1, 'osago_limit_partner_decisions_total', partner => 'metered', outcome => $o)
       - val($m0, 'osago_limit_partner_decisions_total', partner => 'metered', outcome => $o), $d,
       "osago_limit_partner_decisions_total{partner=\"metered\",outcome=\"$o\"} +$d");
}
is(val($m1, 'osago_limit_partner_decisions_total', outcome => 'unauthorized'), 0,
   'per-partner series: only allowed and limited');

# A partner name outside osagoctl's rules ([A-Za-z0-9_.-]{1,64}, docs/osagoctl.md) written into
# Redis by something else never reaches the metrics page: the edge refuses that contract (503).
my $odd = OsagoTest::add_partner($r, name => 'we "q" \\ co', rate => 100, burst => 100);
is(req('/', $odd)->{status}, 503, 'partner with " and \\ in its name refused');
my ($res_odd, $m_odd) = scrape();
@invalid = OsagoTest::prom_invalid_lines($res_odd->{content});
ok(!@invalid, 'exposition still valid') or diag explain \@invalid;
unlike($res_odd->{content}, qr/we "q"/, 'the odd name is not a label value');
cmp_ok(val($m_odd, 'osago_limit_decisions_total', outcome => 'unavailable'), '>=', 1,
       'counted as unavailable');

# rtt histogram
my $c0 = val($m0, 'osago_redis_rtt_seconds_count');
my $c1 = val($m1, 'osago_redis_rtt_seconds_count');
cmp_ok($c1 - $c0, '>=', 6, 'rtt histogram counts the round trips (>= 6 more)');
cmp_ok(val($m1, 'osago_redis_rtt_seconds_sum'), '>', 0, 'rtt sum > 0');
my @buckets = sort { $a->[0] <=> $b->[0] }
              map { /le="([^"]+)"/ ? [ ($1 eq '+Inf' ? 9**9**9 : $1), $m1->{$_} ] : () }
              grep { /^osago_redis_rtt_seconds_bucket\{/ } keys %$m1;
cmp_ok(scalar @buckets, '>=', 2, 'rtt has buckets');
ok(!grep({ $buckets[$_][1] < $buckets[$_ - 1][1] } 1 .. $#buckets), 'buckets are cumulative');
is($buckets[-1][0], 9**9**9, 'last bucket is le="+Inf"');
is($buckets[-1][1], $c1, '+Inf bucket = count');

# redis up, per worker
my @up = grep { /^osago_redis_up\{/ } keys %$m1;
is(scalar @up, $WORKERS, "osago_redis_up: one series per worker ($WORKERS)") or diag explain \@up;
ok(!grep({ $m1->{$_} != 1 } @up), 'all 1 while Redis answers') or diag explain { map { $_ => $m1->{$_} } @up };

# --- Redis stopped: disconnects counted, up -> 0, fallback outcomes ---
my $e0 = val($m1, 'osago_redis_errors_total', kind => 'disconnect');
$r->stop;
my $m2;
OsagoTest::wait_for(sub {
    (undef, $m2) = scrape();
    !grep { $m2->{$_} != 0 } grep { /^osago_redis_up\{/ } keys %$m2;
}, 3);
my @down = grep { /^osago_redis_up\{/ } keys %$m2;
ok(@down == $WORKERS && !grep({ $m2->{$_} != 0 } @down),
   "osago_redis_up 0 after Redis stops, on all $WORKERS workers") or diag explain $m2;
@st = ();
push @st, req('/open', $P)->{status} for 1 .. 2;          # open fallback: fallback_allowed
push @st, req('/', OsagoTest::random_key())->{status};    # never seen: unavailable
push @st, req('/closed', $W)->{status};                   # closed: unavailable
my (undef, $m3) = scrape();
cmp_ok(val($m3, 'osago_redis_errors_total', kind => 'disconnect') - $e0, '>=', 1,
       'osago_redis_errors_total{kind="disconnect"} moved');
my $fb = (val($m3, 'osago_limit_decisions_total', outcome => 'fallback_allowed')
        + val($m3, 'osago_limit_decisions_total', outcome => 'fallback_limited'))
       - (val($m1, 'osago_limit_decisions_total', outcome => 'fallback_allowed')
        + val($m1, 'osago_limit_decisions_total', outcome => 'fallback_limited'));
is($fb, 2, 'fallback_allowed + fallback_limited +2') or diag "@st";
is("@st", '200 200 503 503', 'the traffic: 2 open fallback, 2 unavailable');
is(val($m3, 'osago_limit_decisions_total', outcome => 'unavailable')
   - val($m2, 'osago_limit_decisions_total', outcome => 'unavailable'), 2, 'unavailable +2')
    or diag "@st";

# --- Redis hung: timeouts counted ---
$r->start;
OsagoTest::add_partner($r, name => 'other', key => $W, rate => 100, burst => 100);
OsagoTest::wait_for(sub {
    my (undef, $m) = scrape();
    my @u = grep { /^osago_redis_up\{/ } keys %$m;
    @u && !grep { $m->{$_} != 1 } @u;
}, 4);
my $t0 = val((scrape())[1], 'osago_redis_errors_total', kind => 'timeout');
$r->pause;
req('/closed', $W) for 1 .. 3;
$r->resume;
my (undef, $m4) = scrape();
cmp_ok(val($m4, 'osago_redis_errors_total', kind => 'timeout') - $t0, '>=', 1,
       'osago_redis_errors_total{kind="timeout"} moved while Redis hung');
ok(defined OsagoTest::prom_sum($m4, 'osago_redis_errors_total', kind => 'reply'),
   'osago_redis_errors_total{kind="reply"} exposed');

unlike($n->error_log, qr/\[(alert|emerg)\]|exited on signal/, 'no alerts in error.log')
    or diag $n->error_log;

done_testing;
