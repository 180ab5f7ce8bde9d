#!/usr/bin/perl
# Ways to reach Redis: AUTH (osago_redis_password), SELECT (osago_redis_database), unix socket,
# and a wrong password (treated like an unreachable Redis).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use OsagoTest;

sub limited_server {
    return <<'HTTP';
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { osago_limit on; osago_limit_fallback closed; add_header X-Partner $osago_partner always; empty_gif; }
    }
HTTP
}

sub get {
    my ($n, $key) = @_;
    return OsagoTest::http(GET => $n->url('/'), headers => { 'X-API-Key' => $key });
}

# --- password and database ---
my $r = OsagoTest::Redis->new(password => 'pa$$ word', db => 3);
my $key = OsagoTest::add_partner($r, name => 'authed', rate => 1, burst => 10);
is($r->cli(qw(-n 0 EXISTS), 'osago:partner:' . OsagoTest::key_hash($key)), 0, 'partner only in db 3');
my $n = OsagoTest::Nginx->new(redis => $r, workers => 1, http => <<'HTTP' . limited_server());
    osago_redis_server %%REDIS%%;
    osago_redis_password "pa$$ word";
    osago_redis_database 3;
HTTP
my $res = get($n, $key);
is($res->{status}, 200, 'AUTH + SELECT 3: partner found') or diag explain $res;
is($res->{headers}{'x-partner'}, 'authed', 'its name');
is($r->cli(qw(GET osago:rl:partner:authed)) =~ /^\d+$/ ? 1 : 0, 1, 'GCRA state written in db 3');

# --- scripts flushed (SCRIPT FLUSH, or a failover to a replica that never loaded them) ---
# EVALSHA answers NOSCRIPT: the module sends the script itself (EVAL) once, and the answer is the
# same as ever; later requests use EVALSHA again.
$res = get($n, $key);
is($res->{status}, 200, 'before the flush: 200');
is($r->cli('SCRIPT', 'FLUSH'), 'OK', 'SCRIPT FLUSH');
my @after = map { get($n, $key) } 1 .. 3;
is(join(' ', map { $_->{status} } @after), '200 200 200', 'after it, the limit still answers: 200 200 200');
is($after[0]{headers}{'x-partner'}, 'authed', '  for the partner');
my @loads = $n->error_log =~ /osago redis: script "[^"]+" not loaded, sending it/g;
is(scalar @loads, 1, 'the script was sent once (then EVALSHA again)') or diag $n->error_log;
undef $n;

$n = OsagoTest::Nginx->new(redis => $r, workers => 1, http => <<'HTTP' . limited_server());
    osago_redis_server %%REDIS%%;
    osago_redis_password wrong;
    osago_redis_database 3;
HTTP
$res = get($n, $key);
is($res->{status}, 503, 'wrong password: closed mode answers 503 (Redis unusable)');
like($res->{headers}{'content-type'} // '', qr{^application/problem\+json}, 'problem+json');
ok($res->{elapsed} < 1.5, sprintf 'and quickly (%.2f s)', $res->{elapsed});
undef $n;

# --- a handshake slower than osago_redis_timeout, within osago_redis_connect_timeout ---
# The connect timeout bounds the connect and its handshake together: a Redis that takes 800 ms to
# answer the first commands (here: hung while nginx starts) is waited for, not dropped at 200 ms
# and retried.
$r->pause;
$n = OsagoTest::Nginx->new(redis => $r, workers => 1, http => <<'HTTP' . limited_server());
    osago_redis_server %%REDIS%%;
    osago_redis_password "pa$$ word";
    osago_redis_database 3;
    osago_redis_connect_timeout 3s;
    osago_redis_timeout 200ms;
HTTP
Time::HiRes::sleep(0.8);
$r->resume;
OsagoTest::wait_for(sub { $n->error_log =~ /osago redis: connected to/ }, 5);
$res = get($n, $key);
is($res->{status}, 200, 'slow handshake (800 ms, connect timeout 3 s): the partner is found')
    or diag explain $res;
my $log = $n->error_log;
unlike($log, qr/no reply within the timeout|handshake got no answer|connect timed out/,
       '  and the connection was not dropped while it waited') or diag $log;
my @connected = $log =~ /osago redis: connected to/g;
is(scalar @connected, 1, '  one connection, made once') or diag $log;
undef $n;

# --- unix socket ---
my $u = OsagoTest::Redis->new(unixsocket => 1);
my $ukey = OsagoTest::add_partner($u, name => 'viasocket', rate => 0.001, burst => 2);
$n = OsagoTest::Nginx->new(workers => 2, http => 'osago_redis_server unix:' . $u->socket . ";\n"
                                                 . limited_server());
my @st = map { get($n, $ukey)->{status} } 1 .. 3;
is("@st", '200 200 429', 'unix socket: limits from Redis');
is(get($n, $ukey)->{headers}{'x-partner'}, 'viasocket', 'unix socket: partner name');

done_testing;
