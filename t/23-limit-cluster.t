#!/usr/bin/perl
# Two nginx instances on one Redis enforce one combined limit.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;

my $r = OsagoTest::Redis->new;
my $http = <<'HTTP';
    osago_redis_server %%REDIS%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            osago_limit on;
            osago_limit_edges 2;    # only for the local fallback: must not halve Redis limits
            empty_gif;
        }
    }
HTTP
my @n = map { OsagoTest::Nginx->new(redis => $r, workers => 2, http => $http) } 1 .. 2;
isnt($n[0]->port, $n[1]->port, 'two instances on two ports');

my $key = OsagoTest::add_partner($r, name => 'shared-contract', rate => 5, burst => 10);
my $hdr = { 'X-API-Key' => $key };

# --- the burst is shared: alternate requests, 10 pass in total, not 20 ---
my (@st, @rem);
my $t0 = time;
for my $i (0 .. 15) {
    my $res = OsagoTest::http(GET => $n[$i % 2]->url('/'), headers => $hdr);
    push @st, $res->{status};
    push @rem, OsagoTest::ratelimit($res)->{limit}{r} // 'undef';
}
my $took = time - $t0;
diag(sprintf '16 requests in %.0f ms', $took * 1000) if $took > 0.15;
is(scalar(grep { $_ == 200 } @st[0 .. 9]), 10, 'first 10 alternating requests admitted');
# one more may pass for every 200 ms the 16 requests took (rate 5/s)
cmp_ok(scalar(grep { $_ == 429 } @st[10 .. 15]), '>=', 6 - int($took / 0.2),
       'then both instances limit (burst shared)') or diag "@st";
is("@rem[0..9]", '9 8 7 6 5 4 3 2 1 0', 'RateLimit r counts down across both instances');

# --- sustained: B + R*D over both instances together ---
sleep 2.2;    # refill the burst (10 / 5 per s = 2 s)
my $f = OsagoTest::flood(url => sub { $n[$_[0] % 2]->url('/') }, rps => 100, duration => 3,
                         headers => $hdr, keep_alive => 0);
my (%by, %st);
for my $k (0 .. $#{ $f->{results} }) {
    my $x = $f->{results}[$k];
    $st{ $x->{status} }++;
    $by{ $k % 2 }++ if $x->{status} == 200;
}
my $D = $f->{elapsed};
my $expected = 10 + 5 * $D;
my $admitted = $st{200} // 0;
diag(sprintf '%d sent in %.2f s, admitted %d (instance A %d, B %d), expected %.1f',
             $f->{sent}, $D, $admitted, $by{0} // 0, $by{1} // 0, $expected);
ok(!grep({ $_ != 200 && $_ != 429 } keys %st), 'only 200 and 429') or diag explain \%st;
cmp_ok(abs($admitted - $expected), '<=', 2.5, 'combined admitted = burst + rate x elapsed (+-2.5)');
ok(($by{0} // 0) > 0 && ($by{1} // 0) > 0, 'both instances admitted some');
cmp_ok($admitted, '<', 1.5 * $expected, 'far below what two separate limits would give');

# a reload of one edge: the new workers limit from the same Redis state, nothing leaks
# rate 0.001/s: nothing refills while the reload takes its time
my $k2 = OsagoTest::add_partner($r, name => 'after-reload', rate => 0.001, burst => 2);
is(OsagoTest::http(GET => $n[0]->url('/'), headers => { 'X-API-Key' => $k2 })->{status}, 200,
   'before reload: 1st admitted');
$n[0]->reload;
my @st2 = map { OsagoTest::http(GET => $n[$_]->url('/'), headers => { 'X-API-Key' => $k2 })->{status} }
          0, 1;
is("@st2", '200 429', 'after reload: the combined state carries on (2nd admitted, 3rd limited)');
unlike($n[0]->error_log, qr/open socket #\d+ left in connection|\[alert\]/,
       'reload: no socket left open by the old workers');

for my $x (@n) {
    unlike($x->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no alerts in error.log')
        or diag $x->error_log;
}

done_testing;
