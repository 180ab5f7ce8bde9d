#!/usr/bin/perl
# Fan-out: 1,000 status requests parked on ONE application id are woken by one PUBLISH with a
# single read of the read model per nginx worker (Redis MONITOR: the HMGETs of osago:app:{id}
# after the PUBLISH; osago_poll_reads_total), and every one gets the new document. Then mixed
# versions (only the requests the new version is news to are answered, the others stay parked
# until the next change, again one read per worker), and a burst of duplicate PUBLISHes (reads
# coalesced: at most one more per worker while one is in flight). Last, 800 ids changed while the
# subscription was cut: the re-check finds them, reading 128 ids at a time per worker; and a crowd
# of 1,000 on one id is answered 256 a turn, so another id's answer goes between them.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake qw(:all);
use OsagoPoll qw(:all);

my $T0 = time;
my $N = $ENV{OSAGO_POLL_FANOUT_N} // 1000;
# this process holds all the requests' sockets at once: stay under its descriptor limit
my $FDS = POSIX::sysconf(POSIX::_SC_OPEN_MAX()) || 1024;
if ($N > $FDS - 200) {
    $N = int(($FDS - 200) / 2) * 2;
    diag "descriptor limit $FDS: $N requests";
}
my $WORKERS = 2;

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => $WORKERS, http => poll_http(
    timeout => '10s',
    http_extra => "    osago_redis_timeout 2s;\n    add_header X-Worker \$pid always;"));
my $KEY = OsagoTest::add_partner($r, name => 'acme', rate => 1000000, burst => 1000000);
my $ID = uuid4();
put_app($r, $ID, owner => 'acme', updated_at => 1000);

# warm up both workers
my @warm = map { { path => poll_path($ID), key => $KEY } } 1 .. 40;
many(port => $n->port, requests => \@warm, timeout => 5);
is(scalar(grep { $_->{status} == 200 } @warm), 40, 'warm-up: 40 answered');

# Parks the requests, runs $publish once all are parked, then the `then` actions ([ seconds after
# the publish, sub ]), and waits for the answers. Returns { cmds (MONITOR), m0, m1 (metrics
# before, after), t_pub (epoch), parked (seen before the publish), left (parked 0.5 s after) }.
sub fan {
    my ($reqs, $publish, %o) = @_;
    my %f;
    $f{m0} = poll_metrics($n);
    $f{cmds} = $r->monitor(sub {
        many(port => $n->port, requests => $reqs, timeout => 14, max_connecting => 300,
             actions => [ when_parked($n, scalar @$reqs, sub {
                 my ($now, $t0, $parked) = @_;
                 $f{parked} = $parked;
                 $f{t_pub} = time;
                 $publish->();
                 $now = time - $t0;
                 return ([ $now + 0.5, sub { $f{left} = parked($n); return } ],
                         map { my $a = $_; [ $now + $a->[0], $a->[1] ] } @{ $o{then} || [] });
             }) ]);
    }, settle => 0.3);
    $f{m1} = poll_metrics($n);
    return \%f;
}

sub after_publish {
    my ($cmds, $nth) = @_;
    $nth //= 1;
    my $seen = 0;
    for my $i (0 .. $#$cmds) {
        next unless ($cmds->[$i][1] // '') eq 'publish';
        return @$cmds[ $i + 1 .. $#$cmds ] if ++$seen == $nth;
    }
    return ();
}

sub workers_of { my %w; $w{ hdr($_, 'x-worker') // '?' }++ for @_; \%w }

# --- 1,000 parked on one id, one PUBLISH ---------------------------------------------------------
my @reqs = map { { path => poll_path($ID, latest => 1000), key => $KEY } } 1 .. $N;
my $NEW = app_doc($ID, updated_at => 2000, status => 'in_progress',
                  insurers => [ { code => 'alfa', status => 'ok', premium => 5000 } ]);
my $f = fan(\@reqs, sub {
    put_app($r, $ID, owner => 'acme', updated_at => 2000, doc => $NEW);
    publish($r, $ID, 2000);
});
is($f->{parked}, $N, "$N requests parked on one id (osago_poll_parked $N)");
my $ok = grep { $_->{status} == 200 && $_->{content} eq $NEW } @reqs;
is($ok, $N, "all $N answered 200 with the new document")
    or diag explain { map { ($_->{status} => 1) } @reqs };
my $w = workers_of(@reqs);
my $holding = scalar keys %$w;
diag "requests per worker: " . join(', ', map { "$_: $w->{$_}" } sort keys %$w);
cmp_ok($holding, '<=', $WORKERS, "held by $holding worker(s)");
my @all = hmgets_of($f->{cmds}, $ID);
my @wake = hmgets_of([ after_publish($f->{cmds}) ], $ID);
is(scalar @wake, $holding, "after the PUBLISH: exactly one HMGET osago:app:{id} per worker holding"
                           . " requests ($holding), for $N requests");
cmp_ok(scalar @wake, '<=', $WORKERS, "at most one per nginx worker ($WORKERS)");
is(scalar(@all) - scalar(@wake), $N, "before it: one first read per request ($N)");
is(metric_delta($f->{m0}, $f->{m1}, 'osago_poll_reads_total'), $N + @wake,
   "osago_poll_reads_total: +$N first reads + " . scalar(@wake) . ' wake read(s)');
is(metric_delta($f->{m0}, $f->{m1}, 'osago_poll_answered_total', how => 'woken'), $N, "woken +$N");
is(metric_delta($f->{m0}, $f->{m1}, 'osago_poll_wake_seconds_count'), $N,
   "osago_poll_wake_seconds_count +$N");
my @done = sort { $a <=> $b } map { $_->{done_abs} // 9e9 } @reqs;
my $last = $done[-1] - $f->{t_pub};
diag sprintf 'wake: first answer %.1f ms, last %.1f ms after the PUBLISH',
             ($done[0] - $f->{t_pub}) * 1000, $last * 1000;
# the client's own loop over its 1,000 sockets is part of this time: 5 s, half the poll timeout
cmp_ok($last, '<', 5, sprintf 'all %d answered within 5 s of the PUBLISH (%.3f s)', $N, $last);
is(wait_parked($n, 0, 3), 0, 'osago_poll_parked back to 0');

# --- mixed versions: only those the change is news to; the rest on the next change ---------------
# half have 2000 (parked until something newer), half claim 2500
@reqs = map { { path => poll_path($ID, latest => $_ % 2 ? 2000 : 2500), key => $KEY,
                latest => $_ % 2 ? 2000 : 2500 } } 1 .. $N;
my $D25 = app_doc($ID, updated_at => 2500, status => 'in_progress');
my $D30 = app_doc($ID, updated_at => 3000, status => 'completed');
my $t_pub2;
$f = fan(\@reqs, sub {
    put_app($r, $ID, owner => 'acme', updated_at => 2500, doc => $D25);
    publish($r, $ID, 2500);
}, then => [ [ 1.0, sub {
    put_app($r, $ID, owner => 'acme', updated_at => 3000, doc => $D30);
    $t_pub2 = time;
    publish($r, $ID, 3000);
} ] ]);
is($f->{parked}, $N, "$N parked again");
is($f->{left}, $N / 2, 'after the change to 2500: half stay parked (those with latest 2500)');
my @a = grep { $_->{latest} == 2000 } @reqs;
my @b = grep { $_->{latest} == 2500 } @reqs;
is(scalar(grep { $_->{status} == 200 && $_->{content} eq $D25 } @a), scalar @a,
   'latest 2000: all got the 2500 document');
is(scalar(grep { $_->{status} == 200 && $_->{content} eq $D30 } @b), scalar @b,
   'latest 2500: all got the 3000 document (the next change), none the 2500 one');
ok(!grep({ ($_->{done_abs} // 0) < $t_pub2 } @b), 'and none before that change was published');
$holding = keys %{ workers_of(@reqs) };
my @w1 = hmgets_of([ after_publish($f->{cmds}, 1) ], $ID);
my @w2 = hmgets_of([ after_publish($f->{cmds}, 2) ], $ID);
is(scalar(@w1) - scalar(@w2), $holding, 'first change: one read per worker');
is(scalar @w2, $holding, 'second change: one read per worker');
is(metric_delta($f->{m0}, $f->{m1}, 'osago_poll_reads_total'), $N + @w1,
   'osago_poll_reads_total: first reads + wake reads only');
is(wait_parked($n, 0, 3), 0, 'osago_poll_parked back to 0');

# --- a burst of duplicate PUBLISHes: reads coalesce ---------------------------------------------
# a fresh id (the first one is completed now)
my $ID2 = uuid4();
put_app($r, $ID2, owner => 'acme', updated_at => 1000);
@reqs = map { { path => poll_path($ID2, latest => 1000), key => $KEY } } 1 .. $N;
my $D2 = app_doc($ID2, updated_at => 2000);
my $c = rconn($r);
$f = fan(\@reqs, sub {
    $c->pipeline([ 'HSET', "osago:app:$ID2", 'doc', $D2, 'updated_at', 2000 ],
                 map { [ 'PUBLISH', 'osago:app-updates', "$ID2 2000" ] } 1 .. 10);
});
is(scalar(grep { $_->{status} == 200 && $_->{content} eq $D2 } @reqs), $N,
   "10 PUBLISHes at once: all $N answered 200 with the new document");
$holding = keys %{ workers_of(@reqs) };
my @dup = hmgets_of([ after_publish($f->{cmds}) ], $ID2);
cmp_ok(scalar @dup, '>=', $holding, 'at least one read per worker');
cmp_ok(scalar @dup, '<=', 2 * $holding,
       'at most two per worker (one, and one more for messages heard while it was in flight), '
       . 'not one per message: ' . scalar @dup);
is(wait_parked($n, 0, 3), 0, 'osago_poll_parked back to 0');

# --- the re-check after the subscription is re-made goes in slices ------------------------------
# Each id changed while the subscription was cut, unheard: the re-check finds every one. Its
# reads go out 128 at a time, 10 ms apart, per worker (each worker's command connection is one
# client in MONITOR), not all at once ahead of the other commands on that connection.
my $M = $N < 800 ? $N : 800;
my @ids = map { uuid4() } 1 .. $M;
$c->pipeline(map { [ 'HSET', "osago:app:$_", 'doc', app_doc($_, updated_at => 1000), 'owner', 'acme',
                     'updated_at', 1000 ] } @ids);
my %newer = map { $_ => app_doc($_, updated_at => 2000, status => 'in_progress') } @ids;
@reqs = map { { path => poll_path($_, latest => 1000), key => $KEY, id => $_ } } @ids;
my $cut;
my $cmds = $r->monitor(sub {
    many(port => $n->port, requests => \@reqs, timeout => 14, max_connecting => 300,
         actions => [ when_parked($n, $M, sub {
             $c->pipeline(map { [ 'HSET', "osago:app:$_", 'doc', $newer{$_}, 'updated_at', 2000 ] } @ids);
             $cut = time;
             $r->cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
             return;
         }) ]);
}, settle => 0.3, times => 1);
is(scalar(grep { $_->{status} == 200 && $_->{content} eq $newer{ $_->{id} } } @reqs), $M,
   "$M ids changed while the subscription was cut: every request answered with its change");
my %per_client;
my %want = map { ("osago:app:$_" => 1) } @ids;
for my $cmd (@$cmds) {
    my ($at, $client, $name, $key) = @$cmd;
    next unless $name eq 'hmget' && $want{$key} && $at >= $cut;
    push @{ $per_client{$client} }, $at;
}
my ($busiest) = sort { @{ $per_client{$b} } <=> @{ $per_client{$a} } } keys %per_client;
my @at = @{ $per_client{$busiest} || [] };
is(scalar(map { @$_ } values %per_client), $M, "one re-check read per id ($M)");
my @bursts = (0);
for my $i (1 .. $#at) {
    push @bursts, 0 if $at[$i] - $at[ $i - 1 ] >= 0.004;
    $bursts[-1]++;
}
$bursts[0]++;
my $slices = int((@at + 127) / 128);
diag sprintf 'the busiest worker re-read %d ids in %d bursts over %.0f ms: %s', scalar @at,
             scalar @bursts, 1000 * ($at[-1] - $at[0]), join(' ', @bursts);
cmp_ok(scalar @bursts, '>=', $slices - 1, "  its reads in bursts: at least " . ($slices - 1));
cmp_ok($at[-1] - $at[0], '>=', 0.8 * ($slices - 1) * 0.010,
       sprintf('  spread over at least %.0f ms (%d slices, 10 ms apart)', 8 * ($slices - 1), $slices));

# --- a crowd on one id is answered over several turns ------------------------------------------
# One worker, 1,000 requests parked on id A and one on id B, both changed and published together:
# A's read comes back first. Answered in one turn, all of A's requests went before B's (the access
# log, written as each request ends, keeps that order); offered 256 a turn, B's answer goes
# between them.
my $n1 = OsagoTest::Nginx->new(redis => $r, workers => 1, http => poll_http(
    timeout => '10s',
    http_extra => "    osago_redis_timeout 2s;\n    log_format order '\$uri';",
    extra => '        access_log logs/order.log order;'));
my ($A, $B) = (uuid4(), uuid4());
put_app($r, $_, owner => 'acme', updated_at => 1000) for $A, $B;
my $CROWD = $N < 1000 ? $N : 1000;
my @crowd = ((map { { path => poll_path($A, latest => 1000), key => $KEY } } 1 .. $CROWD),
             { path => poll_path($B, latest => 1000), key => $KEY });
many(port => $n1->port, requests => \@crowd, timeout => 14, max_connecting => 300,
     actions => [ when_parked($n1, $CROWD + 1, sub {
         $c->pipeline((map { [ 'HSET', "osago:app:$_", 'doc', app_doc($_, updated_at => 2000),
                               'updated_at', 2000 ] } $A, $B),
                      [ 'PUBLISH', 'osago:app-updates', "$A 2000" ],
                      [ 'PUBLISH', 'osago:app-updates', "$B 2000" ]);
         return;
     }) ]);
is(scalar(grep { $_->{status} == 200 } @crowd), $CROWD + 1, 'all answered 200');
my @order = split /\n/, OsagoTest::_slurp($n1->prefix . '/logs/order.log');
my ($b_at) = grep { $order[$_] =~ /\Q$B\E/ } 0 .. $#order;
my $a_after = defined $b_at ? grep({ $order[$_] =~ /\Q$A\E/ } $b_at + 1 .. $#order) : -1;
diag "of $CROWD answers on A, $a_after came after B's";
cmp_ok($a_after, '>=', $CROWD - 2 * 256, "B answered within two turns of A's crowd, not after all of it");
$n1->stop;

unlike($n->error_log, qr/\[(alert|emerg|crit)\]/, 'error.log: no alert');
diag sprintf 'took %.1f s', time - $T0;
done_testing;
