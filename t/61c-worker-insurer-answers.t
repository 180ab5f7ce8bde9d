#!/usr/bin/perl
# How the executor judges what an insurer did, and what partners are told:
#   - a refusal of the request itself (401) is final at once: a retry would meet it again; a
#     429 is retried (3 attempts);
#   - a 502 with a body over 64 KiB is "HTTP 502", not a malformed answer;
#   - a premium_rub given twice, or a NUL byte in the answer, is a malformed answer (the parser
#     took the first copy, or stopped at the NUL);
#   - a connection refused is stored as curl's generic reason: the insurer's address and port
#     are in the log, not in the read model partners get;
#   - an address that never accepts fails after connect_timeout_ms, not the call's timeout;
#   - an auth_header bound for http:// beyond this machine, or through a proxy, is said at
#     start (not refused).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::IP;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => ['alfa'], latency => '10-20');
my %fake = (
    deny   => OsagoStack::FakeInsurer->new(code => 'deny', mode => 'status', status => 401),
    busy   => OsagoStack::FakeInsurer->new(code => 'busy', mode => 'status', status => 429),
    bigerr => OsagoStack::FakeInsurer->new(code => 'bigerr', mode => 'status', status => 502,
                                           body => '<html>' . ('x' x 70_000) . '</html>'),
    dup    => OsagoStack::FakeInsurer->new(code => 'dup', mode => 'ok',
                                           body => '{"premium_rub":100,"premium_rub":-5}'),
    nul    => OsagoStack::FakeInsurer->new(code => 'nul', mode => 'ok',
                                           body => "{\"premium_rub\":100}\0junk"),
);
# nothing listens here
my $closed_port = OsagoTest::free_port();
# a listener whose queue of connections is full: new connection attempts go unanswered
my $full = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 1,
                               Proto => 'tcp') or die "listen: $!";
listen($full, 0) or die "listen: $!";    # (IO::Socket::IP takes Listen => 0 for "do not listen")
my @fillers = map { IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $full->sockport,
                                        Blocking => 0) } 1 .. 4;
my $file = $sim->write_insurers("$sim->{dir}/insurers.answers.json", add => [
    (map { $fake{$_}->entry } sort keys %fake),
    { code => 'closed', url => "http://127.0.0.1:$closed_port/quote", timeout_ms => 5000 },
    { code => 'silent', url => 'http://127.0.0.1:' . $full->sockport . '/quote',
      timeout_ms => 20000, connect_timeout_ms => 300 },
]);
my @CODES = ('alfa', sort(keys %fake), 'closed', 'silent');

my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $file,
                                migrate => 1, name => 'answers',
                                args => [ OsagoStack::worker_flags(retry_base_ms => 100,
                                                                   retry_max_ms => 200) ]);
my $t0 = time;
my $id = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_completed($pg, [$id], 40), 'the application completed')
    or diag explain [ $pg->psql('SELECT insurer_code, status, attempt, error FROM quotes') ];
my $took = time - $t0;
my $q = OsagoStack::quotes_of($pg, [$id])->{$id};
my $got = sub { my $x = $q->{ $_[0] } || {}; join ' | ', map { $_ // '-' } @$x{qw(status attempt error)} };

is($got->('alfa'), 'ok | 1 | -', 'alfa answered');
is($got->('deny'), 'error | 1 | HTTP 401', '401: final at the first attempt');
is(scalar @{ $fake{deny}->calls }, 1, '  called once');
is($got->('busy'), 'error | 3 | HTTP 429', '429: retried, an error after 3 attempts');
is($got->('bigerr'), 'error | 3 | HTTP 502', 'a 502 with a 70 KB body: HTTP 502');
is($got->('dup'), 'error | 3 | malformed answer: premium_rub given 2 times',
   'premium_rub twice: a malformed answer');
is($got->('nul'), 'error | 3 | malformed answer: a NUL byte in the body',
   'a NUL byte in the answer: a malformed answer');
is($got->('closed'), 'error | 3 | Couldn\'t connect to server',
   'a refused connection: curl\'s generic reason');
is($got->('silent'), 'error | 3 | no connection within 300 ms',
   'an address that never accepts: no connection within connect_timeout_ms');
# without the connect timeout, the silent insurer's three attempts alone would take 60 s
cmp_ok($took, '<', 20, sprintf('  all within %.1f s (the call\'s own timeout is 20 s)', $took));

my $doc = OsagoStack::read_model($r, $id)->{doc_raw} // '';
unlike($doc, qr/127\.0\.0\.1|:$closed_port\b|port $closed_port\b/,
       'the read model names no insurer address or port');
like($w->log_text, qr/closed attempt \d of 3: Failed to connect to 127\.0\.0\.1 port $closed_port/,
     '  the log does (curl\'s own text)');
OsagoStack::check_all_done($pg, $r, [$id], \@CODES);
$w->stop;
$_->stop for values %fake;
close $_ for grep { defined } @fillers;

# A secret header sent over http:// is readable on the way; to this machine's loopback it is not.
{
    my $auth_file = $sim->write_insurers("$sim->{dir}/insurers.auth.json", add => [
        { code => 'far', url => 'http://192.0.2.1:8080/quote', auth_header => 'X-Api-Key: s3cret-far' },
        { code => 'near', url => 'http://127.0.0.1:' . $sim->port . '/insurers/alfa/quote',
          auth_header => 'X-Api-Key: s3cret-near' },
        { code => 'sealed', url => 'https://192.0.2.1/quote', auth_header => 'X-Api-Key: s3cret-tls' },
    ]);
    my $aw = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $auth_file,
                                     roles => 'executor', name => 'auth-clear');
    my @said = grep { /"event":"insurer_auth_in_clear"/ } split /\n/, $aw->log_text;
    is(scalar @said, 1, 'one insurer said to send its auth_header in clear') or diag $aw->log_text;
    like($said[0] // '', qr/"level":"warn".*insurer far: its auth_header goes to 192\.0\.2\.1 over http:\/\//,
         '  the one over http:// to another machine, by code and host');
    unlike($aw->log_text, qr/s3cret/, '  and no header value is logged');
    $aw->stop;
    # through a proxy, even the loopback's calls cross a network (libcurl honours http_proxy)
    my $pw = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $auth_file,
                                     roles => 'executor', name => 'auth-proxy',
                                     env => { http_proxy => 'http://192.0.2.2:3128', no_proxy => '' });
    @said = grep { /"event":"insurer_auth_in_clear"/ } split /\n/, $pw->log_text;
    is(scalar @said, 2, 'with http_proxy set, two insurers said') or diag $pw->log_text;
    like(join("\n", @said), qr/insurer near: its auth_header goes to 127\.0\.0\.1 over http:\/\/ through the proxy/,
         '  the loopback one as going through the proxy');
    $pw->stop;
}

done_testing;
