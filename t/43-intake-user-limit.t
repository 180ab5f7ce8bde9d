#!/usr/bin/perl
# The per-user application limit (osago_user_limit, default 1 per minute per X-User-Id, scoped
# by partner): 429 user-rate-limited with Retry-After, nothing written for the refused
# application, replays not blocked, no user named = no limit, "off", "N PERIOD", osago_user_id.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake qw(:all);

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_partner_cache_ttl 1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /osago/application { osago_limit on; osago_intake; }
        location = /metrics { osago_metrics; }
    }
    server {
        listen 127.0.0.1:%%PORT2%%;
        location = /osago/application { osago_limit on; osago_intake; osago_user_limit off; }
    }
    server {
        listen 127.0.0.1:%%PORT3%%;
        location = /osago/application {
            osago_limit on;
            osago_intake;
            osago_user_limit 2 2s;
            osago_user_id $http_x_end_user;
        }
    }
    server {
        listen 127.0.0.1:%%PORT4%%;
        osago_user_limit 5 10m;
        # a limit given again replaces the outer one whole: 1 per minute, not 1 per 10 minutes
        location = /osago/application { osago_limit on; osago_intake; osago_user_limit 1; }
    }
HTTP

my $acme = OsagoTest::add_partner($r, name => 'acme', rate => 1000, burst => 1000);
my $beta = OsagoTest::add_partner($r, name => 'beta', rate => 1000, burst => 1000);
my $url2 = 'http://127.0.0.1:' . $n->port2 . '/osago/application';
my $url3 = 'http://127.0.0.1:' . $n->port_n(3) . '/osago/application';
my $json = JSON::PP->new->utf8;

my $hp = 100;
sub fresh { app_json(vehicle => { power_hp => ++$hp }) }    # a different application each time
sub id_of { (eval { $json->decode($_[0]{content}) } || {})->{id} }

my $m0 = metrics($n);
my $limited = 0;

# --- default: 1 application per minute per user ---------------------------------------------
my ($ka, $ba) = (idem_key('ua'), fresh());
my $first = submit($n, key => $acme, idem => $ka, body => $ba, user => 'alice');
is($first->{status}, 202, 'alice, first application: 202') or diag explain $first;
my ($kb, $bb) = (idem_key('ub'), fresh());
my $t0 = time;
my $second = submit($n, key => $acme, idem => $kb, body => $bb, user => 'alice');
$limited++;
is_problem($second, 429, 'user-rate-limited', 'alice, second application within the minute',
           retry_after => [ 1, 60 ]);
cmp_ok(hdr($second, 'retry-after') // 0, '>=', 55, 'Retry-After is about the rest of the minute');
ok(defined hdr($second, 'ratelimit') && defined hdr($second, 'ratelimit-policy'),
   '429 of the user limit still carries the partner RateLimit headers');
ok(!resp($r, 'EXISTS', "osago:idem:acme:$kb"), 'no idempotency record for the refused application');
is(footprint($r)->{xlen}, 1, 'one stream entry (the first application only)');

my $again = submit($n, key => $acme, idem => $kb, body => $bb, user => 'alice');
$limited++;
is_problem($again, 429, 'user-rate-limited', 'retrying the refused application: still 429, not a replay');
my $replay = submit($n, key => $acme, idem => $ka, body => $ba, user => 'alice');
is($replay->{status}, 202, 'a replay of the accepted application is not blocked by the user limit');
is(hdr($replay, 'idempotent-replayed'), 'true', 'it is a replay');
is($replay->{content}, $first->{content}, 'with the original body');
is_problem(submit($n, key => $acme, idem => $ka, body => fresh(), user => 'alice'),
           422, 'idempotency-key-reused', 'the accepted key with another payload: 422 before the user limit');

# another user of the same partner, the same user name at another partner
is(submit($n, key => $acme, idem => idem_key('u2'), body => fresh(), user => 'bob')->{status}, 202,
   'bob of acme: 202');
is(submit($n, key => $beta, idem => idem_key('bu1'), body => fresh(), user => 'alice')->{status}, 202,
   'alice of beta is another user: 202');
$limited++;
is_problem(submit($n, key => $beta, idem => idem_key('bu1b'), body => fresh(), user => 'alice'),
           429, 'user-rate-limited', 'beta\'s alice, second application', retry_after => [ 1, 60 ]);

# no user named: no limit
for my $i (1 .. 3) {
    is(submit($n, key => $acme, idem => idem_key('nouser'), body => fresh())->{status}, 202,
       "no X-User-Id, application $i: 202");
}
my $raw = OsagoTest::raw_http($n->port, post_request(key => $acme, idem => idem_key('empty'), body => fresh(),
                                                     headers => { 'X-User-Id' => '' }));
is($raw->{status}, 202, 'empty X-User-Id: no user, 202');
$raw = OsagoTest::raw_http($n->port, post_request(key => $acme, idem => idem_key('empty'), body => fresh(),
                                                  headers => { 'X-User-Id' => '' }));
is($raw->{status}, 202, 'empty X-User-Id again: 202');

# user ids never become Redis keys as they are
my $evil = 'osago:app:*' . ('x' x 300);
is(submit($n, key => $acme, idem => idem_key('evil'), body => fresh(), user => $evil)->{status}, 202,
   'a long user id full of Redis key syntax: 202');
$limited++;
is_problem(submit($n, key => $acme, idem => idem_key('evil2'), body => fresh(), user => $evil),
           429, 'user-rate-limited', 'and it is limited like any other');
my @keys = @{ resp($r, 'KEYS', '*') };
ok(!grep({ /alice|bob|carol|osago:app:\*|xxxxxxxx/ } @keys), 'no Redis key contains a user id')
    or diag explain \@keys;

# --- osago_user_limit off ---------------------------------------------------------------------
for my $i (1 .. 4) {
    is(submit($n, url => $url2, key => $acme, idem => idem_key('off'), body => fresh(), user => 'carol')->{status},
       202, "osago_user_limit off: carol, application $i: 202");
}
is(submit($n, url => $url2, key => $acme, idem => idem_key('off'), body => fresh(), user => 'alice')->{status},
   202, 'osago_user_limit off: even alice (limited elsewhere) is accepted there');

# --- osago_user_limit 2 2s, osago_user_id $http_x_end_user --------------------------------------
my @k3 = map { idem_key('n3') } 1 .. 4;
my @b3 = map { fresh() } 1 .. 4;
my $hdr = sub { { 'X-End-User' => 'eu-1', 'X-User-Id' => "ignored-$_[0]" } };
is(submit($n, url => $url3, key => $acme, idem => $k3[0], body => $b3[0], headers => $hdr->(0))->{status}, 202,
   '2 per 2s: first');
is(submit($n, url => $url3, key => $acme, idem => $k3[1], body => $b3[1], headers => $hdr->(1))->{status}, 202,
   '2 per 2s: second');
my $third = submit($n, url => $url3, key => $acme, idem => $k3[2], body => $b3[2], headers => $hdr->(2));
is_problem($third, 429, 'user-rate-limited', '2 per 2s: third (user from osago_user_id, X-User-Id ignored)',
           retry_after => [ 1, 2 ]);
$limited++;
is(submit($n, url => $url3, key => $acme, idem => idem_key('n3x'), body => fresh(),
          headers => { 'X-End-User' => 'eu-2', 'X-User-Id' => 'eu-1' })->{status}, 202,
   'another X-End-User: 202');
sleep((hdr($third, 'retry-after') // 2) + 0.2);
my $later = submit($n, url => $url3, key => $acme, idem => $k3[2], body => $b3[2], headers => $hdr->(2));
is($later->{status}, 202, 'after Retry-After, the refused application (same key) is accepted');
ok(!defined hdr($later, 'idempotent-replayed'), 'as a new acceptance, not a replay of the 429');

# --- osago_user_limit 1 inside a server's osago_user_limit 5 10m ---------------------------------
my $url4 = 'http://127.0.0.1:' . $n->port_n(4) . '/osago/application';
is(submit($n, url => $url4, key => $acme, idem => idem_key('n4'), body => fresh(), user => 'dora')->{status},
   202, 'limit 1 under an outer 5 per 10m: first application 202');
my $fourth = submit($n, url => $url4, key => $acme, idem => idem_key('n4'), body => fresh(), user => 'dora');
$limited++;
is_problem($fourth, 429, 'user-rate-limited', '  second: 429, with the rest of the minute to wait',
           retry_after => [ 1, 60 ]);

# --- what landed --------------------------------------------------------------------------------
my $f = footprint($r);
my $accepted = 1 + 1 + 1 + 3 + 2 + 1 + 5 + 2 + 1 + 1 + 1;
is($f->{xlen}, $accepted, "one stream entry per accepted application ($accepted)");
is(scalar @{ $f->{idem} }, $accepted, 'one idempotency record each, none for a 429');

my $m1 = metrics($n);
is(metric_delta($m0, $m1, 'osago_intake_rejected_total', reason => 'user_limited'), $limited,
   "osago_intake_rejected_total{reason=user_limited} +$limited");
is(metric_delta($m0, $m1, 'osago_intake_requests_total', result => 'accepted'), $accepted,
   "accepted +$accepted");

unlike($n->error_log, qr/\[(alert|emerg|crit)\]|segfault|exited on signal/, 'no alerts in error.log')
    or diag join "\n", grep { /\[(alert|emerg|crit)\]|signal/ } split /\n/, $n->error_log;

done_testing;
