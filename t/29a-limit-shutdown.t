#!/usr/bin/perl
# A graceful shutdown (QUIT) while requests are parked on a Redis that does not answer: they are
# answered (by the fallback, after osago_redis_timeout), not cut.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::IP;
use Time::HiRes qw(time sleep);
use OsagoTest;

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 1, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_redis_timeout 500ms;
    osago_partner_cache_ttl 1ms;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { osago_limit on; osago_limit_fallback local; empty_gif; }
    }
HTTP
my $key = OsagoTest::add_partner($r, name => 'calm', rate => 100, burst => 100);

# learn the contract, then let it go stale so the next requests must ask Redis
is(OsagoTest::http(GET => $n->url('/'), headers => { 'X-API-Key' => $key })->{status}, 200,
   'admitted while Redis answers');
sleep 0.05;

$r->pause;
my @socks;
for (1 .. 5) {
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $n->port, Proto => 'tcp')
        or die "connect: $!";
    print $s "GET / HTTP/1.1\r\nHost: x\r\nX-API-Key: $key\r\nConnection: close\r\n\r\n";
    push @socks, $s;
}
sleep 0.1;    # parked on Redis now
my ($master) = $n->master_pid;
kill 'QUIT', $master;
my $t0 = time;

my @status;
for my $s (@socks) {
    my $resp = do { local $/; <$s> } // '';
    push @status, $resp =~ m{^HTTP/1\.1 (\d+)} ? $1 : 'cut';
}
my $took = time - $t0;
$r->resume;

is("@status", '200 200 200 200 200', 'every parked request answered (local fallback), none cut');
cmp_ok($took, '<', 2, sprintf('within the command timeout, not hung (%.2f s)', $took));
done_testing;
