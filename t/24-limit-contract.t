#!/usr/bin/perl
# Contract changes written to Redis apply within osago_partner_cache_ttl, without a reload:
# rate, pool, a new key (negative cache entry), disabling, deleting.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;

my $TTL   = 1.0;     # osago_partner_cache_ttl
my $SLACK = 0.5;     # "within ~1.5 s"

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_partner_cache_ttl 1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            osago_limit on;
            add_header X-Pool "$osago_partner_pool" always;
            empty_gif;
        }
    }
HTTP
my @workers = $n->worker_pids;
my $url = $n->url('/');

# requests spread over both workers (a new connection each), times relative to $ref
sub probe {
    my ($key, $ref, $until, $rps) = @_;
    my $start = time;
    my $f = OsagoTest::flood(url => $url, rps => $rps // 20, duration => $until - ($start - $ref),
                             keep_alive => 0, headers => { 'X-API-Key' => $key });
    $_->{t} += $start - $ref for @{ $f->{results} };
    return $f;
}

sub type_of { my $j = OsagoTest::problem($_[0]); $j ? ($j->{type} // '') =~ s/^urn:osago:problem://r : '' }

# --- rate 2 -> 50 (and pool shared -> premium) ---
my $key = OsagoTest::add_partner($r, name => 'mover', rate => 2, burst => 4, pool => 'shared');
my $res = OsagoTest::http(GET => $url, headers => { 'X-API-Key' => $key });
is($res->{headers}{'ratelimit-policy'}, '"partner";q=4;w=2', 'old contract: q=4;w=2');

my $f1 = probe($key, time, 1.5);
my $adm1 = grep { $_->{status} == 200 } @{ $f1->{results} };
my $exp1 = 3 + 2 * $f1->{elapsed};    # one of the burst already used above
cmp_ok(abs($adm1 - $exp1), '<=', 1.5, "old contract enforced: $adm1 admitted of $f1->{sent} (~$exp1)");

my $T0 = time;
$r->cli(qw(HSET), "osago:partner:" . OsagoTest::key_hash($key), rate => 50, pool => 'premium');
my $f2 = probe($key, $T0, 2.4);
my @after = grep { $_->{t} >= $TTL + $SLACK } @{ $f2->{results} };
my @old_policy = grep { ($_->{headers}{'ratelimit-policy'} // '') eq '"partner";q=4;w=2' } @after;
my @old_pool   = grep { ($_->{headers}{'x-pool'} // '') ne 'premium' } @after;
cmp_ok(scalar @after, '>=', 10, 'probed after the cache TTL');
ok(!@old_policy, sprintf 'new rate in RateLimit-Policy for every request from %.1f s after HSET',
                         $TTL + $SLACK)
    or diag explain [ map { [$_->{t}, $_->{headers}{'ratelimit-policy'}] } @old_policy ];
ok(!@old_pool, 'new pool in $osago_partner_pool likewise')
    or diag explain [ map { [$_->{t}, $_->{headers}{'x-pool'}] } @old_pool ];
my ($first_new) = grep { ($_->{headers}{'x-pool'} // '') eq 'premium' } @{ $f2->{results} };
diag(sprintf 'first request under the new contract: %.2f s after HSET', $first_new->{t})
    if $first_new;
like($after[-1]{headers}{'ratelimit-policy'} // '', qr/^"partner";q=4;w=[01]$/,
     'policy now q=4;w=0 or 1 (4 / 50 s)');

# sustained rate is the new one: B + 50*D at 100 RPS
my $f3 = probe($key, time, 2, 100);
my $adm3 = grep { $_->{status} == 200 } @{ $f3->{results} };
my $exp3 = 4 + 50 * $f3->{elapsed};
diag(sprintf 'new contract flood: %d sent, %d admitted, expected %.1f', $f3->{sent}, $adm3, $exp3);
cmp_ok($f3->{rps}, '>', 70, 'client faster than the new rate');
cmp_ok(abs($adm3 - $exp3), '<=', 0.05 * $exp3 + 1, 'new rate 50/s enforced (within 5 %)');

# --- a key first seen unknown becomes valid (negative cache entry expires) ---
my $late = OsagoTest::random_key();
$res = OsagoTest::http(GET => $url, headers => { 'X-API-Key' => $late });
is(type_of($res), 'api-key-unknown', 'new key: unknown at first');
OsagoTest::http(GET => $url, headers => { 'X-API-Key' => $late }) for 1 .. 4;   # both workers
my $T1 = time;
OsagoTest::add_partner($r, name => 'late', key => $late, rate => 100, burst => 100);
my $f4 = probe($late, $T1, $TTL + $SLACK + 0.5);
my @late4 = grep { $_->{t} >= $TTL + $SLACK } @{ $f4->{results} };
cmp_ok(scalar @late4, '>=', 3, '  probed after the cache TTL');
my @bad4 = grep { $_->{status} != 200 } @late4;
ok(!@bad4, 'partner added in Redis: admitted within ~1.5 s')
    or diag explain [ map { [$_->{t}, $_->{status}] } @bad4 ];

# --- disabled, enabled again, deleted ---
my $h = "osago:partner:" . OsagoTest::key_hash($late);
for my $step ([ 'disabled', [ HSET => $h, enabled => 0 ], 401, 'api-key-disabled' ],
              [ 'enabled again', [ HSET => $h, enabled => 1 ], 200, '' ],
              [ 'deleted', [ DEL => $h ], 401, 'api-key-unknown' ]) {
    my ($what, $cmd, $status, $type) = @$step;
    my $T = time;
    $r->cli(@$cmd);
    my $f = probe($late, $T, $TTL + $SLACK + 0.5);
    my @late = grep { $_->{t} >= $TTL + $SLACK } @{ $f->{results} };
    cmp_ok(scalar @late, '>=', 3, "partner $what: probed after the cache TTL");
    my @bad = grep { $_->{status} != $status || type_of($_) ne $type } @late;
    ok(!@bad, "partner $what: $status $type within ~1.5 s")
        or diag explain [ map { [$_->{t}, $_->{status}, type_of($_)] } @bad[0 .. ($#bad < 2 ? $#bad : 2)] ];
}

is_deeply([ $n->worker_pids ], \@workers, 'no reload happened (same workers)');

# --- a contract cache smaller than the partner set (LRU): every answer still for the right key ---
my $small = OsagoTest::Nginx->new(redis => $r, workers => 1, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_partner_cache_size 2;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { osago_limit on; add_header X-Partner "$osago_partner" always; empty_gif; }
    }
HTTP
my %keys = map { ("lru$_" => OsagoTest::add_partner($r, name => "lru$_", rate => 1000, burst => 1000)) } 1 .. 6;
my @wrong;
for my $round (1 .. 4) {
    for my $name (sort keys %keys) {
        my $x = OsagoTest::http(GET => $small->url('/'), headers => { 'X-API-Key' => $keys{$name} });
        push @wrong, "$name: $x->{status} " . ($x->{headers}{'x-partner'} // '')
            unless $x->{status} == 200 && ($x->{headers}{'x-partner'} // '') eq $name;
    }
}
ok(!@wrong, 'cache of 2 contracts, 6 partners in turn: every answer names the right partner')
    or diag explain \@wrong;
unlike($small->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no alerts (small cache)');
unlike($n->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no alerts in error.log')
    or diag $n->error_log;

done_testing;
