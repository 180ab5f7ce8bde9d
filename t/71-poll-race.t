#!/usr/bin/perl
# No lost wake-up: thousands of status requests, each parked (or about to be) on one of many ids,
# with each id's update (new document + PUBLISH) fired at a random moment around the moment its
# requests are sent: some requests are parked long before, some are in their first read when the
# message arrives, some come after. Every one must be answered 200 with a document newer than its
# latest, before the poll timeout (no 304, no error).
#   round 1: HSET, then PUBLISH, as two commands (pipelined), one update per id
#   round 2: HSET + PUBLISH in one Lua script (as the worker does), two updates per id, half of the
#            requests already have the first update (latest = its updated_at) and must get the second
#   round 3: the updates reach Redis while it is held (SIGSTOP) with first reads queued, so that
#            the messages arrive while those reads are in flight (the race made likely)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use List::Util qw(shuffle);
use POSIX ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake qw(:all);
use OsagoPoll qw(:all);

my $T0 = time;
my $IDS = $ENV{OSAGO_POLL_RACE_IDS} // 200;
my $PER = $ENV{OSAGO_POLL_RACE_PER} // 10;    # requests per id
# this process holds up to all the requests' sockets at once: stay under its descriptor limit
my $FDS = POSIX::sysconf(POSIX::_SC_OPEN_MAX()) || 1024;
if ($IDS * $PER > $FDS - 200) {
    $IDS = int(($FDS - 200) / $PER / 20) * 20 || 20;
    diag "descriptor limit $FDS: $IDS ids";
}
my $TIMEOUT = 10;

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => poll_http(
    timeout => "${TIMEOUT}s", http_extra => '    osago_redis_timeout 2s;'));
my $KEY = OsagoTest::add_partner($r, name => 'acme', rate => 1000000, burst => 1000000);
my $c = rconn($r);

my $LUA = "redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'updated_at', ARGV[2]);"
        . " redis.call('PUBLISH', 'osago:app-updates', ARGV[3]); return 1";

# warm up: both workers connected and know the partner
{
    my $id = uuid4();
    put_app($r, $id, updated_at => 1);
    my @w = map { { path => poll_path($id), key => $KEY } } 1 .. 40;
    many(port => $n->port, requests => \@w, timeout => 5);
    is(scalar(grep { $_->{status} == 200 } @w), 40, 'warm-up: 40 answered');
}

sub round {
    my (%o) = @_;
    my $what = $o{what};
    my @ids = map { uuid4() } 1 .. $IDS;
    my (%doc, %upd_at, @reqs, @acts);
    # first version: updated_at 1000
    $c->pipeline(map { [ 'HSET', "osago:app:$_", 'doc', app_doc($_, updated_at => 1000, status => 'accepted'),
                         'owner', 'acme', 'updated_at', 1000 ] } @ids);
    my $span = 2.0;    # the updates are spread over this many seconds
    for my $i (0 .. $#ids) {
        my $id = $ids[$i];
        my $t = 0.4 + $span * $i / @ids + rand(0.005);
        my @versions = $o{two} ? (2000, 3000) : (2000);
        for my $k (0 .. $#versions) {
            my $u = $versions[$k];
            my $at = $t + $k * 0.015;
            my $doc = $doc{$id}{$u} = app_doc($id, updated_at => $u, status => 'in_progress',
                insurers => [ { code => "v$u", status => 'ok', premium => $u } ]);
            push @acts, [ $at, sub {
                $upd_at{$id}{$u} = time;
                if ($o{lua}) {
                    $c->cmd('EVAL', $LUA, 1, "osago:app:$id", $doc, $u, "$id $u");
                } else {
                    $c->pipeline([ 'HSET', "osago:app:$id", 'doc', $doc, 'updated_at', $u ],
                                 [ 'PUBLISH', 'osago:app-updates', "$id $u" ]);
                }
            } ];
        }
        for my $j (1 .. $PER) {
            # half within +-10 ms of the (first) update, the rest from 300 ms before to 30 ms after
            my $off = $j <= $PER / 2 ? -0.010 + rand(0.020) : -0.300 + rand(0.330);
            my $latest = $o{two} && $j % 2 ? 2000 : 1000;
            # a request with latest 2000 needs the second update: send it around that one
            $off += 0.015 if $latest == 2000;
            push @reqs, { id => $id, latest => $latest, at => $t + $off,
                          path => poll_path($id, latest => $latest), key => $KEY };
        }
    }
    @reqs = shuffle @reqs;
    my $m0 = poll_metrics($n);
    my $out = many(port => $n->port, requests => \@reqs, actions => \@acts,
                   timeout => $TIMEOUT + 5, max_connecting => 300);
    my $m1 = poll_metrics($n);
    my $t0 = $out->{t0};

    # verdicts
    my (%status, @bad, @late, $near, $before, $after);
    for my $q (@reqs) {
        $status{ $q->{status} }++;
        my $got = $q->{content} // '';
        my ($gu) = $got =~ /"updated_at":(\d+)/;
        my $ok = $q->{status} == 200 && defined $gu && $gu > $q->{latest}
              && defined $doc{ $q->{id} }{$gu} && $got eq $doc{ $q->{id} }{$gu};
        push @bad, sprintf('%s latest=%d: %s %s (sent %.3f, done %s)', $q->{id}, $q->{latest},
                           $q->{status}, substr($got, 0, 80), $q->{sent} // -1,
                           defined $q->{done} ? sprintf('%.3f', $q->{done}) : '-')
            unless $ok;
        # when was the request sent, relative to the update it needed?
        my $need = $q->{latest} == 2000 ? 3000 : 2000;
        my $u_at = $upd_at{ $q->{id} }{$need};
        if (defined $q->{sent_abs} && defined $u_at) {
            my $d = $q->{sent_abs} - $u_at;
            if (abs($d) <= 0.005) { $near++ } elsif ($d < 0) { $before++ } else { $after++ }
        }
        push @late, $q if defined $q->{done} && defined $q->{sent} && $q->{done} - $q->{sent} > 3;
    }
    my $N = @reqs;
    diag sprintf '%s: %d requests on %d ids in %.1f s; sent before the update %d, within 5 ms of it'
                 . ' %d, after %d; statuses %s', $what, $N, scalar @ids, $out->{elapsed},
                 $before // 0, $near // 0, $after // 0,
                 join(', ', map { "$_: $status{$_}" } sort keys %status);
    is($status{200} // 0, $N, "$what: all $N answered 200") or diag join "\n", @bad[ 0 .. ($#bad > 20 ? 20 : $#bad) ];
    ok(!@bad, "$what: each with a document newer than its latest, byte for byte");
    ok(!$status{304}, "$what: none timed out (304)") or diag "304: $status{304}";
    ok(!@late, "$what: none waited more than 3 s (the timeout is ${TIMEOUT} s)")
        or diag scalar(@late) . ' late';
    cmp_ok($near // 0, '>=', $N / 20, "$what: many requests were sent within 5 ms of their update");
    cmp_ok($before // 0, '>=', $N / 4, "$what: many were parked before their update");
    my $atonce = metric_delta($m0, $m1, 'osago_poll_answered_total', how => 'at_once');
    my $woken  = metric_delta($m0, $m1, 'osago_poll_answered_total', how => 'woken');
    is($atonce + $woken, $N, "$what: at_once ($atonce) + woken ($woken) = $N");
    cmp_ok($woken, '>=', $N / 4, "$what: a good part were woken from parking");
    is(metric_delta($m0, $m1, 'osago_poll_answered_total', how => 'timed_out'), 0,
       "$what: timed_out +0");
    my $reads = metric_delta($m0, $m1, 'osago_poll_reads_total');
    cmp_ok($reads, '>=', $N, "$what: at least one read per request ($reads)");
    # each update wakes at most once per worker, plus a re-read after a read that was in flight
    cmp_ok($reads, '<=', $N + 2 * 2 * @ids * ($o{two} ? 2 : 1),
           "$what: wake reads bounded by updates x workers x 2");
    is(wait_parked($n, 0, 3), 0, "$what: osago_poll_parked back to 0");
}

# Round 3: the same race made likely. For each burst of ids, their requests are sent, and a few
# ms later Redis is held (SIGSTOP) while the updates are written to it; on SIGCONT it runs the
# first reads that were queued (old documents) and the updates in one go, and sends the
# subscriber's messages together with (often before) those replies: nginx hears of each change
# while the first reads are still in flight.
sub held_round {
    my ($what) = @_;
    my $bursts = 20;
    my $per_burst = int($IDS / $bursts) || 1;
    my (@reqs, @acts, %doc, @ids);
    for my $b (0 .. $bursts - 1) {
        my @bid = map { uuid4() } 1 .. $per_burst;
        push @ids, @bid;
        $c->pipeline(map { [ 'HSET', "osago:app:$_", 'doc', app_doc($_, updated_at => 1000),
                             'owner', 'acme', 'updated_at', 1000 ] } @bid);
        my $t = 0.4 + $b * 0.12;
        for my $id (@bid) {
            $doc{$id} = app_doc($id, updated_at => 2000, status => 'in_progress',
                                insurers => [ { code => 'held', status => 'ok', premium => 1 } ]);
            push @reqs, map { { id => $id, latest => 1000, at => $t + rand(0.004),
                                path => poll_path($id, latest => 1000), key => $KEY } } 1 .. $PER;
        }
        my $hold = $t + 0.002 + rand(0.004);
        push @acts, [ $hold, sub {
            $r->pause;
            $c->send(map { [ 'EVAL', $LUA, 1, "osago:app:$_", $doc{$_}, 2000, "$_ 2000" ] } @bid);
        } ], [ $hold + 0.02, sub { $r->resume; $c->replies } ];
    }
    my $m0 = poll_metrics($n);
    my $out = many(port => $n->port, requests => \@reqs, actions => \@acts,
                   timeout => $TIMEOUT + 5, max_connecting => 300);
    $r->resume if $r->{paused};
    my $m1 = poll_metrics($n);
    my (%status, @bad);
    for my $q (@reqs) {
        $status{ $q->{status} }++;
        push @bad, sprintf('%s: %s %s (sent %.3f, done %s)', $q->{id}, $q->{status},
                           substr($q->{content} // '', 0, 60), $q->{sent} // -1,
                           defined $q->{done} ? sprintf('%.3f', $q->{done}) : '-')
            unless $q->{status} == 200 && ($q->{content} // '') eq $doc{ $q->{id} };
    }
    my $N = @reqs;
    my $atonce = metric_delta($m0, $m1, 'osago_poll_answered_total', how => 'at_once');
    my $woken  = metric_delta($m0, $m1, 'osago_poll_answered_total', how => 'woken');
    diag sprintf '%s: %d requests on %d ids in %.1f s; at once %d, woken %d; statuses %s', $what,
                 $N, scalar @ids, $out->{elapsed}, $atonce, $woken,
                 join(', ', map { "$_: $status{$_}" } sort keys %status);
    is($status{200} // 0, $N, "$what: all $N answered 200 with the new document")
        or diag join "\n", @bad[ 0 .. ($#bad > 20 ? 20 : $#bad) ];
    ok(!$status{304}, "$what: none timed out (304)");
    is($atonce + $woken, $N, "$what: at_once + woken = $N");
    cmp_ok($woken, '>=', 1, "$what: some were parked and woken");
    is(metric_delta($m0, $m1, 'osago_poll_answered_total', how => 'timed_out'), 0,
       "$what: timed_out +0");
    is(wait_parked($n, 0, 3), 0, "$what: osago_poll_parked back to 0");
}

round(what => 'round 1 (HSET, PUBLISH)');
round(what => 'round 2 (Lua, two updates)', lua => 1, two => 1);
held_round('round 3 (Redis held at each update)');

unlike($n->error_log, qr/\[(alert|emerg|crit)\]|cannot read .* for \d+ parked/,
       'error.log: no alert, no failed wake read');
diag sprintf 'took %.1f s', time - $T0;
done_testing;
