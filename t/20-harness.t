#!/usr/bin/perl
# The test harness itself: Redis and nginx (with the osago module loaded) start, answer, reload,
# and really stop.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use OsagoTest;

# OSAGO_NO_MODULE=1 only to check the harness before the module exists; CI loads the module.
my $module = $ENV{OSAGO_NO_MODULE} ? 0 : 1;

ok(-d OsagoTest::root() . '/t', 'root() is the repo root');
is(OsagoTest::build_dir(), $ENV{OSAGO_BUILD} || OsagoTest::root() . '/build', 'build_dir()');
my %seen;
my @ports = map { OsagoTest::free_port() } 1 .. 20;
$seen{$_}++ for @ports;
is(scalar(keys %seen), 20, 'free_port() never repeats itself');

# --- Redis ---
my $r = OsagoTest::Redis->new;
like($r->port, qr/^\d+$/, 'redis port');
is($r->addr, '127.0.0.1:' . $r->port, 'redis addr');
is($r->cli('PING'), 'PONG', 'redis answers PING');
$r->cli(qw(SET a 1));
$r->cli(qw(SET b 2));
is_deeply([ sort $r->cli('--scan') ], [qw(a b)], 'cli in list context gives lines');
my $pid = $r->pid;
ok(OsagoTest::pid_alive($pid), "redis pid $pid alive");

$r->pause;
my $t0 = Time::HiRes::time();
my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $r->port, Timeout => 1);
my $answered;
if ($s) {
    print {$s} "PING\r\n";
    my $sel = IO::Select->new($s);
    $answered = $sel->can_read(0.5) ? 1 : 0;
}
ok(!$answered, 'paused redis does not answer');
$r->resume;
if ($s) {
    my $sel = IO::Select->new($s);
    my $line = $sel->can_read(2) ? <$s> : '';
    like($line // '', qr/PONG/, 'resumed redis answers the pending PING');
    close $s;
}

$r->stop;
ok(!OsagoTest::pid_alive($pid), 'redis stop: process gone');
ok(!OsagoTest::port_open($r->port), 'redis stop: port closed');
$r->start;
is($r->cli('PING'), 'PONG', 'redis start again on the same port');
is($r->cli(qw(GET a)), '', 'restarted redis is empty (no persistence)');

# add_partner writes what osagoctl would
my $key = OsagoTest::add_partner($r, name => 'acme', rate => 20, burst => 40, pool => 'premium');
my $h = OsagoTest::key_hash($key);
like($h, qr/^[0-9a-f]{64}$/, 'key hash');
my %p = $r->cli('HGETALL', "osago:partner:$h");
is_deeply(\%p, { name => 'acme', rate => 20, burst => 40, pool => 'premium', enabled => 1 },
          'partner hash');
is($r->cli(qw(HGET osago:partners acme)), $h, 'partner index');
ok(!grep({ index($_, $key) >= 0 } $r->cli('--scan')), 'no Redis key contains the API key');

# --- nginx ---
my $n = OsagoTest::Nginx->new(
    redis   => $r,
    module  => $module,
    workers => 2,
    http    => ($module ? "osago_redis_server %%REDIS%%;\n" : '') . <<'HTTP');
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { return 204; }
    }
    server {
        listen 127.0.0.1:%%PORT2%%;
        location / { return 200 "two\n"; }
    }
HTTP
like($n->conf, qr/load_module \S+ngx_http_osago_module\.so;/, 'module loaded') if $module;
unlike($n->conf, qr/%%/, 'all placeholders substituted');
my $res = OsagoTest::http(GET => $n->url('/'));
is($res->{status}, 204, 'nginx answers 204') or diag explain $res;
$res = OsagoTest::http(GET => 'http://127.0.0.1:' . $n->port2 . '/');
is($res->{status}, 200, 'second port');
is($res->{content}, "two\n", 'second port body');
is(ref $res->{headers}, 'HASH', 'headers hash');
ok(exists $res->{headers}{'content-type'}, 'header names lowercased');

my @w = $n->worker_pids;
is(scalar @w, 2, 'two workers');
my $master = $n->master_pid;
$n->reload;
my @w2 = $n->worker_pids;
is(scalar @w2, 2, 'two workers after reload');
my %old = map { $_ => 1 } @w;
ok(!grep({ $old{$_} } @w2), 'reload replaced the workers');
is(OsagoTest::http(GET => $n->url('/'))->{status}, 204, 'answers after reload');
like($n->error_log, qr/signal 1 \(SIGHUP\) received|reconfiguring/, 'error_log readable');

$n->stop;
ok(!OsagoTest::pid_alive($master), 'nginx stop: master gone');
ok(!grep({ OsagoTest::pid_alive($_) } @w2), 'nginx stop: workers gone');
is(OsagoTest::http(GET => $n->url('/'), timeout => 2)->{status}, 599, 'connection refused -> 599');
my $prefix = $n->prefix;
undef $n;
ok(!-d $prefix, 'prefix removed') unless $ENV{OSAGO_KEEP};

# check_config
my ($code, $out) = OsagoTest::Nginx->check_config(
    "server { listen 127.0.0.1:%%PORT%%; location / { return 204; } }", module => $module);
is($code, 0, 'nginx -t accepts a good config') or diag $out;
($code, $out) = OsagoTest::Nginx->check_config(
    "server { listen 127.0.0.1:%%PORT%%; location / { no_such_directive; } }", module => $module);
isnt($code, 0, 'nginx -t rejects a bad config');
like($out, qr/unknown directive "no_such_directive"/, 'and says why');

# raw_http
$n = OsagoTest::Nginx->new(module => $module,
    http => "server { listen 127.0.0.1:%%PORT%%; location / { return 200 \"\$http_x_k\"; } }");
$res = OsagoTest::raw_http($n->port, "GET / HTTP/1.0\r\nHost: x\r\nX-K: a\x01b\r\n\r\n");
ok($res->{status} =~ /^(200|400)$/, "raw_http got a status ($res->{status})");

my $rdir = $r->dir;
my $rpid = $r->pid;    # the restarted one's
ok(OsagoTest::pid_alive($rpid), "restarted redis alive (pid $rpid)");
undef $r;
ok(OsagoTest::wait_for(sub { !OsagoTest::pid_alive($rpid) }, 5), 'redis destroyed: its process gone');
ok(!-d $rdir, 'redis dir removed') unless $ENV{OSAGO_KEEP};

done_testing;
