#!/usr/bin/perl
# Redis stopped, hung (SIGSTOP) and back: the fallback modes, no hanging requests, and decisions
# from Redis again without a reload.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use Time::HiRes qw(time sleep);
use IO::Socket::IP;
use OsagoTest;

my $TIMEOUT = 0.2;             # osago_redis_timeout
my $MAXWAIT = $TIMEOUT + 0.8;  # no request may take longer than this

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_redis_timeout 200ms;
    osago_partner_cache_ttl 1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Partner "$osago_partner" always;
        add_header X-Limit-Status "$osago_limit_status" always;
        add_header X-Worker $pid always;
        location /local  { osago_limit on; osago_limit_fallback local; osago_limit_edges 2; empty_gif; }
        location /open   { osago_limit on; osago_limit_fallback open;   empty_gif; }
        location /closed { osago_limit on; osago_limit_fallback closed; empty_gif; }
    }
HTTP
my @workers = $n->worker_pids;

my $P = OsagoTest::add_partner($r, name => 'pee', rate => 10,  burst => 20);
my $Q = OsagoTest::add_partner($r, name => 'queue', rate => 100, burst => 100);

sub req {
    my ($path, $key, %o) = @_;
    return OsagoTest::http(GET => $n->url($path), timeout => 5,
                           headers => { defined $key ? ('X-API-Key' => $key) : () }, %o);
}
sub hdr { my $v = $_[0]{headers}{ lc $_[1] }; ref $v ? $v->[0] : $v }
sub type_of { my $j = OsagoTest::problem($_[0]); $j ? ($j->{type} // '') =~ s/^urn:osago:problem://r : '' }

my @slow;    # every request slower than $MAXWAIT while Redis is in trouble
sub timed {
    my ($what, $res) = @_;
    push @slow, [ $what, sprintf('%.3f', $res->{elapsed}), $res->{status} ]
        if $res->{elapsed} > $MAXWAIT || $res->{status} == 599;
    return $res;
}

# --- warm up: both workers learn both contracts ---
my %seen;
for (1 .. 300) {
    for my $k ($P, $Q) {
        my $res = req('/open', $k);
        $seen{ hdr($res, 'x-worker') // '' }{$k} = 1 if $res->{status} == 200 || $res->{status} == 429;
    }
    last if 2 == grep { keys %{ $seen{$_} } == 2 } @workers;
}
is(scalar(grep { keys %{ $seen{$_} || {} } == 2 } @workers), 2,
   'both workers have seen both partners');
sleep 1.2;    # the cached contracts are now past osago_partner_cache_ttl: "last known" ones

# --- Redis stopped in the middle of a flood on /local ---
my $STOP_AT = 100;    # request index (1 s into the flood at 100 RPS)
my $f = OsagoTest::flood(rps => 100, duration => 4, keep_alive => 0, timeout => 5,
                         headers => { 'X-API-Key' => $P },
                         url => sub {
                             $r->stop if $_[0] == $STOP_AT;
                             $n->url('/local');
                         });
my @res = @{ $f->{results} };
my $rel_stop = $res[$STOP_AT]{t};
my (%st_before, %st_after, @after_ok, @bad_429);
for my $i (0 .. $#res) {
    my $x = $res[$i];
    if ($i < $STOP_AT) { $st_before{ $x->{status} }++; next }
    $st_after{ $x->{status} }++;
    push @after_ok, $x if $x->{status} == 200;
    push @bad_429, $x if $x->{status} == 429
        && !(($x->{headers}{'retry-after'} // '') =~ /^\d+$/ && $x->{headers}{'retry-after'} >= 1);
    push @slow, [ 'local flood', sprintf('%.3f', $x->{elapsed}), $x->{status} ]
        if $x->{elapsed} > $MAXWAIT || $x->{status} == 599;
}
my $D = $f->{results}[-1]{t} - $rel_stop;
my $exp_local = 20 / 2 + 10 / 2 * $D;    # burst/edges + rate/edges * D
my $adm_local = @after_ok;
diag(sprintf 'local fallback: %d admitted over %.2f s after the stop, expected %.1f; before: %s; after: %s',
             $adm_local, $D, $exp_local, join(',', %st_before), join(',', %st_after));
ok(!grep({ $_ != 200 && $_ != 429 } keys %st_after), 'local: known partner gets only 200/429')
    or diag explain \%st_after;
cmp_ok(abs($adm_local - $exp_local), '<=', 0.15 * $exp_local + 2,
       'local: rate/edges and burst/edges of the last known contract, per instance');
ok(!@bad_429, 'local: 429 carries Retry-After >= 1');
my $late = (grep { $_->{t} > $rel_stop + 0.5 } @{ $f->{results} })[-1];
is(hdr($late, 'x-limit-status'), $late->{status} == 200 ? 'fallback_allowed' : 'fallback_limited',
   '$osago_limit_status fallback_*');

# unknown key in local mode
my $never = OsagoTest::random_key();
my $res = timed('local unknown', req('/local', $never));
is($res->{status}, 503, 'local: a key never seen gets 503');
is(type_of($res), 'limiter-unavailable', 'local unknown: limiter-unavailable');
is(hdr($res, 'x-limit-status'), 'unavailable', '$osago_limit_status unavailable');

# closed
for (1 .. 5) { $res = timed('closed', req('/closed', $Q)) }
is($res->{status}, 503, 'closed: 503');
is(type_of($res), 'limiter-unavailable', 'closed: limiter-unavailable');
like(hdr($res, 'retry-after') // '', qr/^[1-9]\d*$/, 'closed: Retry-After >= 1');
like(hdr($res, 'content-type') // '', qr{^application/problem\+json}, 'closed: problem+json');

# open
for (1 .. 5) { $res = timed('open', req('/open', $P)) }
is($res->{status}, 200, 'open: known partner admitted');
is(hdr($res, 'x-partner'), 'pee', 'open: known partner keeps its variables');
is(hdr($res, 'x-limit-status'), 'fallback_allowed', 'open: fallback_allowed');
$res = timed('open unknown', req('/open', $never));
is($res->{status}, 200, 'open: everything is admitted, unknown keys too');
$res = req('/open', undef);
is($res->{status}, 401, 'open: a missing key is still 401 (decided before Redis)');

# --- Redis back (empty, then repopulated: P is now disabled) ---
$r->start;
my $T_up = time;
OsagoTest::add_partner($r, name => 'pee',   key => $P, rate => 10,  burst => 20, enabled => 0);
OsagoTest::add_partner($r, name => 'queue', key => $Q, rate => 100, burst => 100);
my (@p_after, @q_after, $first_redis);
while (time < $T_up + 4) {
    my $rp = timed('after restart', req('/closed', $P));
    my $rq = timed('after restart', req('/closed', $Q));
    my $t = time - $T_up;
    $first_redis //= $t if $rp->{status} == 401;
    if ($t >= 3) {
        push @p_after, $rp->{status} . ' ' . type_of($rp);
        push @q_after, $rq->{status};
    }
    sleep 0.05;
}
diag(sprintf 'first decision from the restarted Redis after %.2f s', $first_redis // -1);
ok(@p_after && !grep({ $_ ne '401 api-key-disabled' } @p_after),
   'restarted Redis: disabled there -> 401 within ~3 s, no reload') or diag "@p_after";
ok(@q_after && !grep({ $_ != 200 } @q_after), 'restarted Redis: closed mode admits again')
    or diag "@q_after";
my $st;
my $mon = $r->monitor(sub { $st = req('/closed', $Q)->{status} });
is($st, 200, 'closed mode, Redis back: 200');
ok(grep({ $_->[0] ne 'lua' && $_->[1] =~ /^eval/ } @$mon), 'and the decision came from the new Redis')
    or diag explain $mon;

# --- Redis hung (SIGSTOP) ---
$r->pause;
my $T_pause = time;
my %pst;
for (1 .. 4) {
    for my $p (qw(/closed /open /local)) {
        my $x = timed("paused $p", req($p, $Q));
        $pst{$p}{ $x->{status} }++;
    }
}
# and a few at once
my @kids;
for my $c (1 .. 6) {
    pipe(my $rd, my $wr) or die;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $rd;
        for my $p (qw(/closed /open /local)) {
            my $x = req($p, $Q);
            print {$wr} "$p $x->{status} $x->{elapsed}\n";
        }
        close $wr;
        POSIX::_exit(0);
    }
    close $wr;
    push @kids, [ $pid, $rd ];
}
for my $k (@kids) {
    my $fh = $k->[1];
    while (<$fh>) {
        my ($p, $s, $e) = split;
        $pst{$p}{$s}++;
        push @slow, [ "paused concurrent $p", $e, $s ] if $e > $MAXWAIT || $s == 599;
    }
    waitpid($k->[0], 0);
}
diag(explain \%pst);
is_deeply([ keys %{ $pst{'/closed'} } ], [503], 'hung Redis, closed: 503');
is_deeply([ keys %{ $pst{'/open'} } ], [200], 'hung Redis, open: 200');
ok(!grep({ $_ != 200 && $_ != 429 } keys %{ $pst{'/local'} }), 'hung Redis, local: known partner 200/429');
ok(!@slow, "no request took longer than osago_redis_timeout + slack (${MAXWAIT}s)")
    or diag explain \@slow;

# clients that give up while their request waits for the hung Redis
my @gone;
for (1 .. 20) {
    my $path = (qw(/closed /open /local))[ $_ % 3 ];
    my $c = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $n->port, Proto => 'tcp')
        or next;
    print {$c} "GET $path HTTP/1.1\r\nHost: x\r\nX-API-Key: $Q\r\n\r\n";
    push @gone, $c;
}
sleep 0.05;
close $_ for @gone;
sleep 0.1;

# --- resumed: decisions from Redis again ---
$r->resume;
sleep 0.2;    # late replies for the requests above arrive now
is_deeply([ $n->worker_pids ], \@workers, 'late replies for finished requests: workers still alive');
is(req('/closed', $P)->{status}, 401, 'and answering');
my $T_res = time;
$r->cli(qw(HSET), 'osago:partner:' . OsagoTest::key_hash($Q), enabled => 0);
my @q_res;
while (time < $T_res + 4) {
    my $x = req('/closed', $Q);
    push @q_res, $x->{status} . ' ' . type_of($x) if time - $T_res >= 3;
    sleep 0.05;
}
ok(@q_res && !grep({ $_ ne '401 api-key-disabled' } @q_res),
   'resumed Redis: its data decides again within ~3 s') or diag "@q_res";

is_deeply([ $n->worker_pids ], \@workers, 'same workers throughout (no reload, no crash)');
unlike($n->error_log, qr/\[(alert|emerg)\]|exited on signal/, 'no alerts in error.log')
    or diag $n->error_log;

done_testing;
