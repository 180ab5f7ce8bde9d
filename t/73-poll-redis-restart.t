#!/usr/bin/perl
# Redis restarted (same port, AOF so the read models survive) under parked status requests:
# they stay parked while it is down (osago_poll_subscribed 0), a new request then gets 503
# unavailable with Retry-After; after the restart the subscriber connection is re-made
# (osago_poll_subscribed back to 1 per worker) and
#   X  an update written and published right after the start, before the subscription is back
#      (nobody heard it): found by the re-check of every parked id -> 200
#   Y  an update written and published once subscribed again -> 200 at once
#   W  nothing changed -> 304 at the poll timeout (the re-check answers nothing stale)
# Then two cases where the subscriber connection is up but the command connection is not when a
# wake-up is due: the command connection refusing its handshake while the subscription comes
# back, and Redis hanging long enough for the command connection to be dropped while a PUBLISH
# for parked requests is on its way. Every parked id is read again when the command connection
# is ready again.
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
my $TIMEOUT = 6;
my $r = OsagoTest::Redis->new(args => [ '--appendonly', 'yes', '--appendfsync', 'always' ]);
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => poll_http(
    timeout => "${TIMEOUT}s", http_extra => '    add_header X-Worker $pid always;'));
my $KEY = OsagoTest::add_partner($r, name => 'acme', rate => 100000, burst => 100000);
my @W = $n->worker_pids;

# warm-up: both workers know the partner (the limiter's local fallback admits it while Redis is
# down, and the status location itself answers)
{
    my $id = uuid4();
    put_app($r, $id, updated_at => 1);
    my %by;
    # the kernel may hand one batch of connections to one worker: another batch, a few times
    for (1 .. 5) {
        my @w = map { { path => poll_path($id), key => $KEY } } 1 .. 60;
        many(port => $n->port, requests => \@w, timeout => 5);
        $by{ hdr($_, 'x-worker') // '?' } = 1 for @w;
        last if keys %by >= 2;
    }
    is(scalar(keys %by), 2, 'warm-up answered by both workers');
}

sub subscribed { OsagoTest::prom_sum(poll_metrics($n), 'osago_poll_subscribed') // -1 }

# error.log lines of one worker after a marker offset: [ [kind, line], ... ]
sub conn_events {
    my ($pid, $from) = @_;
    my @ev;
    for my $l (split /\n/, substr($n->error_log, $from)) {
        next unless $l =~ /\b$pid#\d+: osago redis: (.*)$/;
        my $m = $1;
        push @ev, $m =~ /^subscribed to/ ? 'subscribed'
                : $m =~ /^connected to .*\(subscriber\)/ ? 'sub-connected'
                : $m =~ /^connected to/ ? 'cmd-connected'
                : $m =~ /dropping the connection/ ? 'cmd-dropped'
                : 'other';
    }
    return @ev;
}

# Was the subscription confirmed before the command connection was ready (the bug's condition)?
sub subscribed_first {
    my ($pid, $from) = @_;
    my @ev = grep { $_ ne 'other' } conn_events($pid, $from);
    for my $e (@ev) {
        return 0 if $e eq 'cmd-connected';
        return 1 if $e eq 'subscribed';
    }
    return 0;
}

sub groups {
    my (%g) = @_;    # tag => number of ids (3 requests each)
    my (%ids, @reqs);
    for my $tag (sort keys %g) {
        for (1 .. $g{$tag}) {
            my $id = uuid4();
            put_app($r, $id, owner => 'acme', updated_at => 1000);
            push @{ $ids{$tag} }, $id;
            push @reqs, map { { tag => $tag, id => $id, key => $KEY,
                                path => poll_path($id, latest => 1000) } } 1 .. 3;
        }
    }
    return (\%ids, \@reqs);
}

sub update_cmds {
    my ($docs, @ids) = @_;
    return map {
        $docs->{$_} = app_doc($_, updated_at => 2000, status => 'in_progress');
        ([ 'HSET', "osago:app:$_", 'doc', $docs->{$_}, 'updated_at', 2000 ],
         [ 'PUBLISH', 'osago:app-updates', "$_ 2000" ])
    } @ids;
}

# --- part 1: a Redis restart ------------------------------------------------------------------
{
    my ($ids, $reqs) = groups(X => 4, Y => 4, W => 2);
    my $N = @$reqs;
    my (%docs, %s, $down503, $down503b, $t_pub_y, $check);
    my $log_from = length $n->error_log;
    $check = sub {
        my ($rel) = @_;
        $s{sub_after} = subscribed();
        return [ $rel + 0.02, $check ] if $s{sub_after} < 2 && $rel < 8;
        $s{resub_at} = time;
        my $c = rconn($r);
        $c->pipeline(update_cmds(\%docs, @{ $ids->{Y} }));
        $t_pub_y = time;
        return;
    };
    many(port => $n->port, requests => $reqs, timeout => $TIMEOUT + 6, actions => [
        when_parked($n, $N, sub {
            my ($now) = @_;
            $s{parked_before} = parked($n);
            $r->stop;
            $s{stopped} = time;
            return ([ $now + 0.3, sub {
                my $m = poll_metrics($n);
                $s{parked_down} = OsagoTest::prom_sum($m, 'osago_poll_parked');
                $s{sub_down} = OsagoTest::prom_sum($m, 'osago_poll_subscribed');
                $s{up_down} = OsagoTest::prom_sum($m, 'osago_redis_up');
                $down503 = poll_get($n, $ids->{W}[0], key => $KEY, latest => 1000, timeout => 5);
                $down503b = poll_get($n, $ids->{W}[0], key => $KEY, timeout => 5);
                return;
            } ], [ $now + 2.1, sub {
                $r->start;
                $s{started} = time;
                my $c = rconn($r);
                my $rep = $c->pipeline(update_cmds(\%docs, @{ $ids->{X} }), [ 'CLIENT', 'LIST' ]);
                $s{x_written} = time;
                $s{nobody_listened} = ($rep->[-1] // '') !~ /\bsub=[1-9]/;
                return [ 0, $check ];
            } ]);
        }),
    ]);
    undef $check;

    is($s{parked_before}, $N, "$N requests parked");
    is($s{parked_down}, $N, 'Redis down: they stay parked');
    is($s{sub_down}, 0, 'Redis down: osago_poll_subscribed 0 on every worker');
    is($s{up_down}, 0, 'Redis down: osago_redis_up 0');
    is_problem($down503, 503, 'unavailable', 'a status request while Redis is down (with latest)',
               retry_after => [ 1, 1 ]);
    cmp_ok($down503->{elapsed}, '<', 1, sprintf '  answered at once (%.3f s)', $down503->{elapsed});
    is_problem($down503b, 503, 'unavailable', 'a status request while Redis is down (no latest)',
               retry_after => [ 1, 1 ]);
    # a matter of timing (nginx retries every second by then): when a subscriber was
    # quicker, X went the ordinary way, and is still checked below
    note($s{nobody_listened}
         ? 'X updates written and published before any subscriber was back (CLIENT LIST: none)'
         : 'nginx re-subscribed before the X updates were written');
    is($s{sub_after}, 2, sprintf 'osago_poll_subscribed back to 1 on each worker (%.2f s after the'
                                 . ' start)', ($s{resub_at} // 0) - ($s{started} // 0));
    my $m = poll_metrics($n);
    is_deeply([ map { OsagoTest::prom_sum($m, 'osago_poll_subscribed', worker => $_) } 0, 1 ],
              [ 1, 1 ], 'osago_poll_subscribed{worker="0"} 1, {worker="1"} 1');

    my @y = grep { $_->{tag} eq 'Y' } @$reqs;
    is(scalar(grep { $_->{status} == 200 && $_->{content} eq $docs{ $_->{id} } } @y), scalar @y,
       'Y (published after the subscription was back): all 200 with the new document');
    ok(!grep({ ($_->{done_abs} // 9e9) - $t_pub_y > 0.5 } @y), '  within 0.5 s of the PUBLISH');
    my @w = grep { $_->{tag} eq 'W' } @$reqs;
    is(scalar(grep { $_->{status} == 304 && $_->{content} eq '' } @w), scalar @w,
       'W (unchanged): 304, no body, nothing stale answered by the re-check');
    ok(!grep({ my $e = $_->{done} - $_->{sent}; $e < $TIMEOUT * 0.95 || $e > $TIMEOUT * 1.3 } @w),
       "  at the poll timeout ($TIMEOUT s)");

    # X: the re-check after the re-subscription must find the update nobody heard; on a worker
    # whose subscription was confirmed before its command connection was ready, the re-check
    # happens when the command connection is.
    my %first = map { $_ => subscribed_first($_, $log_from) } @W;
    diag 'workers whose subscription came back before their command connection: '
         . join(', ', grep { $first{$_} } @W) if grep { $first{$_} } @W;
    for my $pid (@W) {
        my @x = grep { $_->{tag} eq 'X' && (hdr($_, 'x-worker') // '') eq $pid } @$reqs;
        next unless @x;
        my $what = sprintf 'X (written while no one listened), %d held by worker %d', scalar @x, $pid;
        my $ok = grep { $_->{status} == 200 && $_->{content} eq $docs{ $_->{id} } } @x;
        is($ok, scalar @x, "$what: 200 with the new document");
        ok(!grep({ ($_->{done_abs} // 9e9) - $s{resub_at} > 1.5 } @x),
           '  within 1.5 s of the re-subscription');
    }
    my @x = grep { $_->{tag} eq 'X' } @$reqs;
    is(scalar(grep { !defined hdr($_, 'x-worker') } @x), 0, 'every X request was answered');
    is(wait_parked($n, 0, 3), 0, 'osago_poll_parked back to 0');
    my $res = poll_get($n, $ids->{Y}[0], key => $KEY);
    is($res->{status}, 200, 'after the restart: a new status request is answered');
}

# --- part 2: subscription back, command connection not (deterministic) ---------------------------
# Redis comes back (a fresh one on the same port) with an ACL that keeps the default user from
# running SCRIPT: the command connection's handshake (SCRIPT LOAD) is refused and it keeps
# retrying, while the subscriber connection (no scripts) subscribes at once and re-checks the
# parked ids. The update is written as soon as Redis is up. Once SCRIPT is allowed again the
# command connection is back within a second; the update written while nobody listened should
# then reach the parked requests.
{
    my ($ids, $reqs) = groups(P => 4);
    my (%docs, %s, $wait_sub);
    $wait_sub = sub {
        my ($rel) = @_;
        my $m = poll_metrics($n);
        $s{sub} = OsagoTest::prom_sum($m, 'osago_poll_subscribed');
        return [ $rel + 0.02, $wait_sub ] if $s{sub} < 2 && $rel < 6;
        return [ $rel + 0.3, sub {
            $s{up_before_allow} = OsagoTest::prom_sum(poll_metrics($n), 'osago_redis_up');
            rconn($r)->cmd('ACL', 'SETUSER', 'default', '+script');
            $s{allowed} = time;
            return;
        } ];
    };
    my $port = $r->port;
    my $restart = sub {
        $r = OsagoTest::Redis->new(port => $port, args => [
            '--appendonly', 'yes', '--user', qw(default on nopass ~* &* +@all -script) ]);
        my $c = rconn($r);
        $c->pipeline(map { [ 'HSET', "osago:app:$_", 'doc', app_doc($_, updated_at => 1000),
                             'owner', 'acme', 'updated_at', 1000 ] } @{ $ids->{P} });
        $c->pipeline(update_cmds(\%docs, @{ $ids->{P} }));
        return [ 0, $wait_sub ];
    };
    many(port => $n->port, requests => $reqs, timeout => $TIMEOUT + 4, actions => [
        when_parked($n, scalar @$reqs, sub {
            my ($now) = @_;
            $s{parked} = parked($n);
            $r->stop;
            return [ $now + 0.7, $restart ];
        }),
    ]);
    undef $wait_sub;
    rconn($r)->cmd('ACL', 'SETUSER', 'default', '+script');    # whatever happened
    OsagoTest::add_partner($r, name => 'acme', key => $KEY, rate => 100000, burst => 100000);
    is($s{parked}, scalar @$reqs, scalar(@$reqs) . ' requests parked');
    is($s{sub}, 2, 'the subscriptions came back');
    is($s{up_before_allow}, 0, 'while the command connections were still refused (osago_redis_up 0)');
    like($n->error_log, qr/refused the handshake: NOPERM/, 'error.log: the handshake was refused');
    ok(OsagoTest::wait_for(sub { OsagoTest::prom_sum(poll_metrics($n), 'osago_redis_up') == 2 }, 3),
       'then the command connections came back (osago_redis_up 1 on each worker)');
    my $ok = grep { $_->{status} == 200 && $_->{content} eq $docs{ $_->{id} } } @$reqs;
    is($ok, scalar @$reqs, 'the parked requests got the update written while no one listened');
    ok(!grep({ ($_->{done_abs} // 9e9) - ($s{allowed} // 0) > 1.5 } @$reqs),
       '  soon after the command connection was back');
    my %st;
    $st{ $_->{status} }++ for @$reqs;
    diag 'part 2 answers: ' . join ', ', map { "$_: $st{$_}" } sort keys %st;
    is(scalar(grep { $_->{status} == 200 || $_->{status} == 304 } @$reqs), scalar @$reqs,
       'each got 200 or 304 (nothing cut, no error)');
    is(wait_parked($n, 0, 3), 0, 'osago_poll_parked back to 0');
}

# --- part 3: Redis hangs; the PUBLISH arrives while the command connection reconnects -------------
# Redis is held (SIGSTOP) until a request arriving meanwhile has made its worker's command
# connection time out and drop (osago_redis_timeout 200ms); the other worker is the control. The update is written while Redis is
# held, so its message reaches the subscribers (which never noticed anything) the moment Redis
# resumes, while that worker's command connection is still being re-made.
{
    my ($ids, $reqs) = groups(H => 10);
    my (%docs, %s);
    my $c = rconn($r);
    my $log_from = length $n->error_log;
    my @kids;
    my ($resume, $dropped_yet);
    $resume = sub {
        $c->send(update_cmds(\%docs, @{ $ids->{H} }));
        $r->resume;
        $s{resumed} = time;
        $c->replies;
        return;
    };
    # resumed once a command connection has given up on the held Redis (or after 3 s)
    $dropped_yet = sub {
        my ($rel) = @_;
        $s{held} //= $rel;
        return [ $rel + 0.02, $dropped_yet ]
            if !grep({ $_ eq 'cmd-dropped' } map { conn_events($_, $log_from) } @W)
               && $rel - $s{held} < 3;
        undef $dropped_yet;
        return [ $rel + 0.05, $resume ];
    };
    many(port => $n->port, requests => $reqs, timeout => $TIMEOUT + 4, actions => [
        when_parked($n, scalar @$reqs, sub {
            my ($now) = @_;
            $s{parked} = parked($n);
            $r->pause;
            # a request that stalls on the held Redis, in a child (the loop must go on)
            my $pid = fork // die "fork: $!";
            if (!$pid) {
                my @q = ({ path => poll_path(uuid4()), key => $KEY });
                many(port => $n->port, requests => \@q, timeout => 3);
                POSIX::_exit(0);
            }
            push @kids, $pid;
            return [ $now + 0.2, $dropped_yet ];
        }),
    ]);
    waitpid($_, 0) for @kids;
    is($s{parked}, scalar @$reqs, scalar(@$reqs) . ' requests parked');
    my %dropped = map { my $p = $_; ($p => scalar grep { $_ eq 'cmd-dropped' } conn_events($p, $log_from)) } @W;
    ok(grep({ $dropped{$_} } @W), 'a command connection was dropped while Redis hung'
       . ' (error.log "no reply within the timeout")');
    for my $pid (@W) {
        my @h = grep { (hdr($_, 'x-worker') // '') eq $pid } @$reqs;
        next unless @h;
        my $what = sprintf '%d held by worker %d', scalar @h, $pid;
        my $ok = grep { $_->{status} == 200 && $_->{content} eq $docs{ $_->{id} } } @h;
        is($ok, scalar @h, $dropped{$pid}
                           ? "$what (its command connection was re-made): woken, 200"
                           : "$what: woken, 200 with the new document");
    }
    my %st;
    $st{ $_->{status} }++ for @$reqs;
    diag 'part 3 answers: ' . join ', ', map { "$_: $st{$_}" } sort keys %st;
    is(wait_parked($n, 0, 3), 0, 'osago_poll_parked back to 0');
}

# A request woken by a re-made subscription has no message to be timed from: it must not be
# timed from zero (the host's uptime in one sample)
my $wm = poll_metrics($n);
my ($wsum, $wcount) = map { OsagoTest::prom_sum($wm, "osago_poll_wake_seconds_$_") // 0 } qw(sum count);
cmp_ok($wcount, '>', 0, "osago_poll_wake_seconds: $wcount wake-ups");
cmp_ok($wsum, '<=', $wcount * $TIMEOUT, '  each timed within the poll timeout (sum '
       . sprintf('%.3f s)', $wsum));
unlike($n->error_log, qr/\[(alert|emerg|crit)\]/, 'error.log: no alert');
diag sprintf 'took %.1f s', time - $T0;
done_testing;
