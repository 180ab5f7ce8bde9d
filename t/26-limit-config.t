#!/usr/bin/perl
# Directive validation with nginx -t: good values pass (no Redis needed), bad ones are rejected
# with a message naming the directive.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use OsagoTest;

OsagoTest::need_module();

sub conf {
    my (%o) = @_;
    my $http = $o{http} // '';
    my $loc  = $o{loc}  // '';
    return <<"HTTP";
    $http
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            osago_limit on;
            $loc
            empty_gif;
        }
    }
HTTP
}

# --- accepted ---
my ($code, $out) = OsagoTest::Nginx->check_config(<<'HTTP');
    osago_redis_server 127.0.0.1:6399;
    osago_redis_password s3cret;
    osago_redis_database 2;
    osago_redis_connect_timeout 500ms;
    osago_redis_timeout 150ms;
    osago_partner_cache_ttl 2s;
    osago_partner_cache_size 100;
    osago_partner_lookup_rate 0;
    osago_zone_size 2m;
    osago_limit off;
    osago_api_key $http_x_api_key;
    osago_limit_fallback closed;
    osago_limit_edges 3;
    server {
        listen 127.0.0.1:%%PORT%%;
        osago_limit_fallback open;
        location / {
            osago_limit on;
            osago_api_key $arg_key;
            osago_limit_fallback local;
            osago_limit_edges 1;
            empty_gif;
        }
        location = /metrics { osago_metrics; }
    }
HTTP
is($code, 0, 'every directive with a valid value: nginx -t passes (no Redis running)') or diag $out;

for my $ok ('osago_redis_server unix:/tmp/osago-test-none.sock;',
            'osago_redis_server localhost:6379;',
            'osago_redis_timeout 1s;') {
    ($code, $out) = OsagoTest::Nginx->check_config(conf(http => $ok));
    is($code, 0, "accepted: $ok") or diag $out;
}
($code, $out) = OsagoTest::Nginx->check_config(conf());
is($code, 0, 'defaults: osago_limit on without any other directive') or diag $out;

# --- rejected, naming the directive ---
my @bad = (
    [ loc  => 'osago_limit maybe;',                'osago_limit' ],
    [ loc  => 'osago_limit_fallback sideways;',    'osago_limit_fallback' ],
    [ loc  => 'osago_limit_edges 0;',              'osago_limit_edges' ],
    [ loc  => 'osago_limit_edges -2;',             'osago_limit_edges' ],
    [ loc  => 'osago_limit_edges many;',           'osago_limit_edges' ],
    [ http => 'osago_redis_timeout -1;',           'osago_redis_timeout' ],
    [ http => 'osago_redis_timeout soon;',         'osago_redis_timeout' ],
    [ http => 'osago_redis_connect_timeout x;',    'osago_redis_connect_timeout' ],
    [ http => 'osago_partner_cache_ttl forever;',  'osago_partner_cache_ttl' ],
    [ http => 'osago_partner_cache_size lots;',    'osago_partner_cache_size' ],
    [ http => 'osago_partner_lookup_rate -5;',     'osago_partner_lookup_rate' ],
    [ http => 'osago_partner_lookup_rate 1000001;', undef ],   # nginx's bounds message
    [ loc  => 'osago_partner_lookup_rate 10;',     'osago_partner_lookup_rate' ],   # http only
    [ http => 'osago_redis_database x;',           'osago_redis_database' ],
    [ http => 'osago_zone_size big;',              'osago_zone_size' ],
    [ http => 'osago_redis_server 127.0.0.1:99999;', undef ],   # the module's own message
    [ http => 'osago_redis_server;',               'osago_redis_server' ],
    [ loc  => 'osago_limit on off;',               'osago_limit' ],
    [ loc  => 'osago_redis_server 127.0.0.1:6379;', 'osago_redis_server' ],   # http only
    [ http => 'osago_metrics;',                    'osago_metrics' ],         # location only
    [ http => 'osago_app_ttl 0;',                  'osago_app_ttl' ],   # Redis would drop the key at once
    [ loc  => 'osago_idempotency_ttl 0s;',         'osago_idempotency_ttl' ],
);
for my $b (@bad) {
    my ($where, $text, $directive) = @$b;
    ($code, $out) = OsagoTest::Nginx->check_config(conf($where => $text));
    isnt($code, 0, "rejected: $text");
    if (defined $directive) {
        like($out, qr/\[emerg\].*"\Q$directive\E"/, "  message names \"$directive\"") or diag $out;
    } else {
        like($out, qr/\[emerg\]/, '  with an [emerg] message') or diag $out;
    }
}

done_testing;
