#!/usr/bin/perl
# 50 identical requests (same Idempotency-Key, same body) at once, on 2 nginx workers: one
# application id and one stream entry; every answer is the 202 (first or replay) or 409
# request-in-progress, never a second id. Once with Redis answering at once, once with Redis
# held (SIGSTOP) while all 50 arrive, so that they all overlap.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use POSIX ();
use IO::Socket::IP;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake qw(:all);

my $N = 50;
my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_redis_timeout 5s;
    osago_partner_cache_ttl 1s;
    osago_app_ttl 1h;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /osago/application { osago_limit on; osago_intake; }
        location = /metrics { osago_metrics; }
    }
HTTP

my $P = OsagoTest::add_partner($r, name => 'acme', rate => 1000, burst => 1000);
my $Q = OsagoTest::add_partner($r, name => 'beta', rate => 1000, burst => 1000);
my $json = JSON::PP->new->utf8;

# warm up: both workers connected and know the partners
for (1 .. 20) { submit($n, key => $_ % 2 ? $P : $Q, idem => undef, body => '{}') }
my $stream_before = footprint($r)->{xlen};
is($stream_before, 0, 'nothing accepted yet');

sub round {
    my ($what, %o) = @_;
    my $key  = idem_key('conc');
    my $body = app_json(vehicle => { power_hp => $o{hp} });
    my $req  = post_request(key => $o{partner} // $P, idem => $key, body => $body);
    my $m0   = metrics($n);
    my $before = footprint($r);
    my $res;
    if ($o{hold}) {
        # every request reaches nginx while Redis is stopped; they all wait on it together
        $r->pause;
        my $pid = fork // die "fork: $!";
        if (!$pid) { sleep 0.6; kill 'CONT', $r->pid; POSIX::_exit(0) }
        $res = parallel_raw($n->port, [ ($req) x $N ], timeout => 15);
        waitpid($pid, 0);
        $r->{paused} = 0;
    } else {
        $res = parallel_raw($n->port, [ ($req) x $N ], timeout => 15);
    }
    my $after = footprint($r);
    my $m1 = metrics($n);

    subtest "$what: $N identical requests at once" => sub {
        my (%status, %ids, $first, @bad);
        for my $x (@$res) {
            $status{ $x->{status} }++;
            if ($x->{status} == 202) {
                my $d = eval { $json->decode($x->{content}) } || {};
                $ids{ $d->{id} // 'undef' }++;
                $ids{ ($x->{headers}{location} // '') =~ s{^/osago/application/}{}r }++;
                $first++ unless ($x->{headers}{'idempotent-replayed'} // '') eq 'true';
            } elsif ($x->{status} == 409) {
                my $p = OsagoTest::problem($x) || {};
                push @bad, $x unless ($p->{type} // '') eq 'urn:osago:problem:request-in-progress'
                                  && ($x->{headers}{'retry-after'} // '') =~ /^\d+$/;
            } else {
                push @bad, $x;
            }
        }
        note 'statuses: ' . join(', ', map { "$_ x$status{$_}" } sort keys %status);
        is(scalar(grep { $_->{complete} } @$res), $N, 'every request answered');
        ok(!@bad, 'every answer is 202 or 409 request-in-progress (with Retry-After)')
            or diag explain [ map { { status => $_->{status}, content => $_->{content} } } @bad[0 .. ($#bad > 2 ? 2 : $#bad)] ];
        cmp_ok($status{202} // 0, '>=', 1, 'at least one 202');
        is(scalar keys %ids, 1, 'one application id in all the answers (bodies and Location)')
            or diag explain \%ids;
        is($first // 0, 1, 'exactly one 202 is the original, the others are replays');
        my @bodies = keys %{{ map { $_->{content} => 1 } grep { $_->{status} == 202 } @$res }};
        is(scalar @bodies, 1, 'all 202 bodies byte-identical');

        my @new = @{ $after->{entries} }[ scalar @{ $before->{entries} } .. $#{ $after->{entries} } ];
        is(scalar @new, 1, 'exactly one new stream entry');
        my ($id) = keys %ids;
        is($new[0]{fields}{app_id}, $id, 'the stream entry is that application');
        is(scalar(@{ $after->{apps} }) - scalar(@{ $before->{apps} }), 1, 'one new read model');
        my $partner = $o{partner} && $o{partner} eq $Q ? 'beta' : 'acme';
        is(hgetall($r, "osago:idem:$partner:$key")->{app_id}, $id, 'the idempotency record names it');
        my $ttl = resp($r, 'TTL', "osago:app:$id");
        ok($ttl > 3500 && $ttl <= 3600, "osago_app_ttl 1h: read model TTL $ttl");

        is(metric_delta($m0, $m1, 'osago_intake_requests_total', result => 'accepted'), 1,
           'metrics: accepted +1');
        is(metric_delta($m0, $m1, 'osago_intake_requests_total', result => 'replayed'),
           ($status{202} // 0) - 1, 'metrics: replayed + the replays');
        is(metric_delta($m0, $m1, 'osago_intake_rejected_total', reason => 'in_progress'),
           $status{409} // 0, 'metrics: in_progress + the 409s');
        is(metric_delta($m0, $m1, 'osago_intake_rejected_total'), $status{409} // 0,
           'metrics: no other rejection');
    };
    return $res;
}

round('Redis answering', hp => 140);
round('again, partner beta', hp => 140, partner => $Q);
my $held = round('Redis held 0.6 s', hp => 141, hold => 1);
cmp_ok(scalar(grep { $_->{status} == 409 } @$held), '>', 0,
       'with all of them in flight at once, some were told 409 request-in-progress');

# A client that goes away while Redis holds its acceptance: the request is cleaned up (the key is
# not left "in progress" in that worker), and the retries see exactly one application.
{
    my $key  = idem_key('gone');
    my $body = app_json(vehicle => { power_hp => 142 });
    my $req  = post_request(key => $P, idem => $key, body => $body);
    my $cut  = length($req) - 20;
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $n->port, Proto => 'tcp')
        or die "connect: $!";
    binmode $s;
    syswrite($s, substr($req, 0, $cut));    # the limiter decides, the body is being read
    sleep 0.3;
    $r->pause;
    syswrite($s, substr($req, $cut));       # the body is complete: the acceptance waits on Redis
    sleep 0.3;
    close $s;                               # and the client gives up
    sleep 0.3;
    $r->resume;
    my (%st, %ids);
    for (1 .. 8) {
        my $x = submit($n, key => $P, idem => $key, body => $body);
        $st{ $x->{status} }++;
        $ids{ (eval { $json->decode($x->{content}) } || {})->{id} // '' }++ if $x->{status} == 202;
    }
    is_deeply(\%st, { 202 => 8 }, 'client gone mid-acceptance: 8 retries afterwards all get 202, none 409')
        or diag explain \%st;
    is(scalar keys %ids, 1, 'one application id') or diag explain \%ids;
    unlike($n->error_log, qr/\[(alert|emerg|crit)\]/, 'no alert after the client went away');
}

is(footprint($r)->{xlen}, 4, 'four applications in all');
unlike($n->error_log, qr/\[(alert|emerg|crit)\]|segfault|exited on signal/, 'no alerts in error.log')
    or diag join "\n", grep { /\[(alert|emerg|crit)\]|signal/ } split /\n/, $n->error_log;

done_testing;
