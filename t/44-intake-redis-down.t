#!/usr/bin/perl
# Redis stopped, then hung (SIGSTOP): the intake answers 503 intake-unavailable with Retry-After
# quickly, writes nothing (or everything: never half), and once Redis is back a retry with the
# same Idempotency-Key is accepted exactly once.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake qw(:all);

# AOF, so that what Redis holds survives the stop/start and can be inspected afterwards
my $r = OsagoTest::Redis->new(args => [ '--appendonly', 'yes', '--appendfsync', 'always' ]);
# one worker: the limiter's local fallback knows the partner from the warm-up request
my $n = OsagoTest::Nginx->new(redis => $r, workers => 1, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_redis_timeout 200ms;
    osago_partner_cache_ttl 1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /osago/application { osago_limit on; osago_intake; }
        location = /metrics { osago_metrics; }
    }
HTTP

my $P = OsagoTest::add_partner($r, name => 'acme', rate => 1000, burst => 1000);
my $json = JSON::PP->new->utf8;
sub id_of { (eval { $json->decode($_[0]{content}) } || {})->{id} // '' }
sub type_of { ((OsagoTest::problem($_[0]) || {})->{type} // '') =~ s/^urn:osago:problem://r }

my %seen;    # problem types / outcomes the clients saw
sub post {
    my $res = submit($n, @_, timeout => 5);
    $seen{ $res->{status} == 202 ? (hdr($res, 'idempotent-replayed') ? 'replayed' : 'accepted')
         : $res->{status} . ' ' . type_of($res) }++;
    return $res;
}

# Every application in Redis is complete: a read model, its stream entry and an idempotency
# record, all naming the same ids.
sub consistent {
    my ($what) = @_;
    my $f = footprint($r);
    my @apps   = sort map { s/^osago:app://r } @{ $f->{apps} };
    my @stream = sort map { $_->{fields}{app_id} // '' } @{ $f->{entries} };
    my @idem   = sort map { hgetall($r, $_)->{app_id} // '' } @{ $f->{idem} };
    subtest "$what: nothing half-written" => sub {
        is_deeply(\@stream, \@apps, 'every read model has its stream entry and vice versa');
        is_deeply(\@idem, \@apps, 'every application has its idempotency record and vice versa');
    };
    return scalar @apps;
}

my $warm = post(key => $P, idem => idem_key('warm'), body => app_json(vehicle => { power_hp => 70 }));
is($warm->{status}, 202, 'warm-up application accepted');
is(consistent('after the warm-up'), 1, 'one application');
sleep 1.2;    # the contract is now only "last known" (osago_partner_cache_ttl 1s)
my $m0 = metrics($n);

# --- Redis stopped --------------------------------------------------------------------------------
$r->stop;
my $K1 = idem_key('down');
my $B1 = app_json(vehicle => { power_hp => 71 });
for my $i (1 .. 3) {
    my $res = post(key => $P, idem => $K1, body => $B1);
    is_problem($res, 503, 'intake-unavailable', "Redis stopped, attempt $i", retry_after => [ 1, 60 ]);
    cmp_ok($res->{elapsed}, '<', 1, sprintf 'answered at once (%.3f s)', $res->{elapsed});
}
my $res = post(key => $P, idem => idem_key('down2'), body => app_json(vehicle => { power_hp => 72 }));
is_problem($res, 503, 'intake-unavailable', 'Redis stopped, another application');
$r->start;
is(consistent('after Redis is back'), 1, 'nothing was written while Redis was down');
ok(!resp($r, 'EXISTS', "osago:idem:acme:$K1"), 'no idempotency record for the refused key');

# the client retries with the same key until Redis is reachable again (~3 s at most)
my ($ok, @during);
my $deadline = time + 4;
while (time < $deadline) {
    $res = post(key => $P, idem => $K1, body => $B1);
    if ($res->{status} == 503 && type_of($res) =~ /unavailable/) { push @during, $res; sleep 0.1; next }
    $ok = $res;
    last;
}
ok($ok, sprintf 'Redis back: the retry gets through (after %d more 503s)', scalar @during)
    or diag $n->error_log;
$ok ||= { status => 0, headers => {}, content => '' };
is($ok->{status}, 202, 'the retry is accepted') or diag explain $ok;
ok(!defined hdr($ok, 'idempotent-replayed'), 'as the original acceptance (nothing was stored before)');
my $id1 = id_of($ok);
like($id1, uuid7_re(), 'with a UUIDv7');
my $again = post(key => $P, idem => $K1, body => $B1);
is(hdr($again, 'idempotent-replayed'), 'true', 'the next retry is a replay');
is(id_of($again), $id1, 'of the same application');
is(consistent('after the retries'), 2, 'two applications in all (warm-up and the retried one)');

# --- Redis hung (SIGSTOP): commands time out -----------------------------------------------------
my $K2 = idem_key('hung');
my $B2 = app_json(vehicle => { power_hp => 73 });
$r->pause;
my @hung;
for my $i (1 .. 2) {
    my $t = time;
    $res = post(key => $P, idem => $K2, body => $B2);
    push @hung, $res;
    is_problem($res, 503, 'intake-unavailable', "Redis hung, attempt $i", retry_after => [ 1, 60 ]);
    cmp_ok(time - $t, '<', 1.5, sprintf 'no hanging request: answered in %.3f s', time - $t);
}
$r->resume;

# A command that timed out may still run when Redis wakes up: then the retry is a replay. Either
# way there is exactly one application for the key.
my (@ids, $got);
$deadline = time + 4;
while (time < $deadline) {
    $res = post(key => $P, idem => $K2, body => $B2);
    if ($res->{status} == 503) { sleep 0.1; next }
    $got = $res;
    last;
}
ok($got && $got->{status} == 202, 'Redis awake: the retry with the same key gets 202')
    or diag explain $got;
push @ids, id_of($got) if $got;
$res = post(key => $P, idem => $K2, body => $B2);
is(hdr($res, 'idempotent-replayed'), 'true', 'and the next one is a replay');
push @ids, id_of($res);
is(scalar(keys %{{ map { $_ => 1 } @ids }}), 1, 'one application id for the key') or diag explain \@ids;
is(consistent('after the hang'), 3, 'three applications in all: the hung key was accepted once');

# --- metrics ------------------------------------------------------------------------------------
my $m1 = metrics($n);
my $unavail = $seen{'503 intake-unavailable'} // 0;
ok(!grep({ /^5\d\d / && $_ ne '503 intake-unavailable' } keys %seen), 'no other 5xx')
    or diag explain \%seen;
is(metric_delta($m0, $m1, 'osago_intake_rejected_total', reason => 'unavailable'), $unavail,
   "osago_intake_rejected_total{reason=unavailable} +$unavail (the 503s the clients saw)");
is(metric_delta($m0, $m1, 'osago_intake_requests_total', result => 'accepted'), $seen{accepted} - 1,
   'accepted counted once per acceptance');
is(metric_delta($m0, $m1, 'osago_intake_requests_total', result => 'replayed'), $seen{replayed} // 0,
   'replays counted');

unlike($n->error_log, qr/\[(alert|emerg|crit)\]|segfault|exited on signal/, 'no alerts in error.log')
    or diag join "\n", grep { /\[(alert|emerg|crit)\]|signal/ } split /\n/, $n->error_log;

done_testing;
