#!/usr/bin/perl
# Parked status requests leak nothing:
#   - clients that go away (FIN or RST), parked or still in their first read, are cleaned up at
#     once: osago_poll_parked drops to 0, and a later PUBLISH for their ids reads nothing (the
#     ids' nodes went with their last request);
#   - a graceful reload ($n->reload) and a graceful stop (SIGQUIT) answer parked requests 304
#     within a second, and the old workers / the master exit without waiting for the poll timeout;
#   - nginx under valgrind (memcheck), through parking, wake-ups, timeouts, disconnects in both
#     states, refusals, a reload and a stop: no "definitely lost" block and no invalid access in
#     the module's frames (ngx_http_osago_*).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use POSIX ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake qw(:all);
use OsagoPoll qw(:all);

my $T0 = time;
my $r = OsagoTest::Redis->new;
my $KEY = OsagoTest::add_partner($r, name => 'acme', rate => 1000000, burst => 1000000);

sub nginx {
    my (%o) = @_;
    return ($o{class} // 'OsagoTest::Nginx')->new(redis => $r, workers => $o{workers} // 2, http => poll_http(
        timeout => $o{timeout} // '30s',
        http_extra => "    osago_redis_timeout 1s;\n    add_header X-Worker \$pid always;"));
}

my $T_LAST = $T0;
sub lap { my ($what) = @_; diag sprintf '%s: %.1f s', $what, time - $T_LAST; $T_LAST = time }

# a read of an application's document (the limiter's own HMGET of a partner, from its script, is not)
sub is_app_read { ($_[0][1] // '') eq 'hmget' && ($_[0][2] // '') =~ /^osago:app:/ }
sub worker_crashed { $_[0]->error_log =~ /exited on signal|\[alert\].*worker process/ }

sub after_publish {
    my ($cmds) = @_;
    my $i = 0;
    $i++ while $i < @$cmds && ($cmds->[$i][1] // '') ne 'publish';
    return @$cmds[ $i + 1 .. $#$cmds ];
}

# $count requests for $id (latest = its updated_at, a large document), closed (half with RST) as
# soon as all their first reads have been sent; then a PUBLISH for the id. Returns ({reqs, reads,
# parked_at_close, parked_after, m0, m1}, MONITOR commands).
sub closed_in_first_read {
    my ($nx, $id, $count) = @_;
    my %st = (reqs => [ map { { path => poll_path($id, latest => 1000), key => $KEY, rst => $_ % 2 } }
                        1 .. $count ]);
    $st{m0} = poll_metrics($nx);
    my $base = OsagoTest::prom_sum($st{m0}, 'osago_poll_reads_total');
    my $watch;
    $watch = sub {
        my ($rel) = @_;
        my $m = poll_metrics($nx);
        $st{reads} = OsagoTest::prom_sum($m, 'osago_poll_reads_total') - $base;
        return [ $rel + 0.002, $watch ] if $st{reads} < $count && $rel < 5;
        $st{parked_at_close} = OsagoTest::prom_sum($m, 'osago_poll_parked');
        $_->{close_at} = 0 for @{ $st{reqs} };
        return [ $rel + 1.5, sub {
            $st{parked_after} = wait_parked($nx, 0, 3);
            publish($r, $id, 5000);
            return;
        } ];
    };
    my $cmds = $r->monitor(sub {
        many(port => $nx->port, requests => $st{reqs}, timeout => 20,
             actions => [ [ 0.0, $watch ] ]);
    }, settle => 0.3);
    undef $watch;
    $st{m1} = poll_metrics($nx);
    return (\%st, $cmds);
}

# --- client disconnects -------------------------------------------------------------------------
my $n = nginx();
my @ids = map { uuid4() } 1 .. 20;
put_app($r, $_, owner => 'acme', updated_at => 1000) for @ids;
{
    # 200 parked (10 per id), then closed: odd ones with FIN, even ones with RST
    my @reqs = map { { id => $ids[ $_ % @ids ], path => poll_path($ids[ $_ % @ids ], latest => 1000),
                       key => $KEY, rst => $_ % 2 == 0 } } 0 .. 199;
    my ($parked, $t_close, $drop_t);
    my $cmds = $r->monitor(sub {
        many(port => $n->port, requests => \@reqs, timeout => 10, actions => [ when_parked($n, 200, sub {
            my ($now) = @_;
            $parked = $_[2];
            $t_close = time;
            $_->{close_at} = 0 for @reqs;    # due now: the loop closes them all
            return [ $now + 0.001, sub {
                my $t = time;
                my $v = wait_parked($n, 0, 2);
                $drop_t = time - $t_close if $v == 0;
                # every node must be gone: a PUBLISH for each id now reads nothing
                publish($r, $_, 5000) for @ids;
                return;
            } ];
        }) ]);
    }, settle => 0.3);
    is($parked, 200, '200 requests parked on 20 ids');
    is(scalar(grep { defined $_->{aborted} } @reqs), 200, 'the client closed all 200 (100 FIN, 100 RST)');
    ok(defined $drop_t, 'osago_poll_parked dropped to 0');
    cmp_ok($drop_t // 99, '<', 0.5, sprintf '  within %.0f ms of the closes', ($drop_t // 99) * 1000);
    my @pub = grep { ($_->[1] // '') eq 'publish' } @$cmds;
    my @after;
    my $seen;
    for my $c (@$cmds) { $seen ||= ($c->[1] // '') eq 'publish'; push @after, $c if $seen && is_app_read($c) }
    is(scalar @pub, 20, 'a PUBLISH for each of the 20 ids');
    is(scalar @after, 0, 'and no read followed: nobody waits on those ids any more (nodes freed)')
        or diag explain \@after;
    is(wait_parked($n, 0, 1), 0, 'osago_poll_parked 0');
}
{
    # closed while their first read is in flight: the read model is large (4 MB), so its replies
    # take a while to arrive; the clients go as soon as every read has been sent. The reads are
    # cancelled, nothing is parked when they come back, nothing is answered on a closed
    # connection, and the id's node goes.
    my $big = uuid4();
    put_app($r, $big, owner => 'acme', updated_at => 1000,
            doc => app_doc($big, updated_at => 1000, tail => ',"pad":"' . ('x' x (4 << 20)) . '"'));
    my ($state, $cmds) = closed_in_first_read($n, $big, 12);
    is($state->{reads}, 12, 'the 12 first reads were sent');
    SKIP: {
        # the watch polls /metrics while the 4 MB replies arrive; a descheduled test process can
        # miss the moment, and what matters below holds either way
        skip 'every read came back before the clients closed (a slow test process)', 1
            if $state->{parked_at_close} == 12;
        cmp_ok($state->{parked_at_close}, '<', 12, "when the clients closed, $state->{parked_at_close}"
               . ' were parked: the others were still reading');
    }
    is(scalar(grep { defined $_->{aborted} } @{ $state->{reqs} }), 12, '12 requests closed');
    is($state->{parked_after}, 0, 'osago_poll_parked 0 afterwards');
    is(metric_delta($state->{m0}, $state->{m1}, 'osago_poll_answered_total', how => $_), 0,
       "answered $_ +0") for qw(at_once woken timed_out);
    is(scalar(grep { ($_->[1] // '') eq 'publish' } @$cmds), 1, 'MONITOR saw the PUBLISH for the id');
    is(scalar(grep { is_app_read($_) } after_publish($cmds)), 0,
       '  and it read nothing (its node is gone)');
    ok(!worker_crashed($n), 'no worker crashed') or diag $n->error_log;
    my $res = poll_get($n, $ids[0], key => $KEY);
    is($res->{status}, 200, 'a new request afterwards: 200');
}

lap('disconnects');

# --- timeouts ------------------------------------------------------------------------------------
# Parked requests that time out (304) take their ids' nodes with them: osago_poll_ids, the ids held
# in memory, counts each id once per worker while requests wait on it and drops to 0 once the last
# one is answered.
{
    my $t = nginx(timeout => '1s');
    my @tids = map { uuid4() } 1 .. 10;
    put_app($r, $_, owner => 'acme', updated_at => 1000) for @tids;
    my @reqs = map { { path => poll_path($tids[ $_ % @tids ], latest => 1000), key => $KEY } } 1 .. 30;
    my ($parked, $held);
    many(port => $t->port, requests => \@reqs, timeout => 10, actions => [ when_parked($t, 30, sub {
        $parked = $_[2];
        $held = OsagoTest::prom_sum(poll_metrics($t), 'osago_poll_ids');
        return;
    }) ]);
    is($parked, 30, '30 requests parked on 10 ids (1 s timeout)');
    ok(defined $held && $held >= 10 && $held <= 20,
       "osago_poll_ids while they wait: $held (each id once per worker that holds it, 2 workers)");
    is(scalar(grep { $_->{status} == 304 } @reqs), 30, 'every one timed out: 304');
    ok(OsagoTest::wait_for(sub { OsagoTest::prom_sum(poll_metrics($t), 'osago_poll_ids') == 0 }, 2),
       'osago_poll_ids 0 afterwards: the ids\' nodes went with their last request')
        or diag 'osago_poll_ids ' . OsagoTest::prom_sum(poll_metrics($t), 'osago_poll_ids');
    is(parked($t), 0, 'osago_poll_parked 0');
    is(OsagoTest::prom_sum(poll_metrics($n), 'osago_poll_ids'), 0,
       'and on the first nginx, after its disconnects: osago_poll_ids 0');
    $t->stop;
}

lap('timeouts');

# --- graceful reload ($n->reload) ------------------------------------------------------------------
{
    my @reqs = map { { path => poll_path($ids[ $_ % @ids ], latest => 1000), key => $KEY } } 1 .. 60;
    my @old = $n->worker_pids;
    my ($parked, $t_hup, $kid);
    many(port => $n->port, requests => \@reqs, timeout => 10, actions => [ when_parked($n, 60, sub {
        $parked = $_[2];
        $t_hup = time;
        $kid = fork // die "fork: $!";
        if (!$kid) {
            # the harness' reload (HUP, new workers up, old ones gone) in a child, so that this
            # loop goes on reading the answers meanwhile
            my $ok = eval { $n->reload; 1 };
            POSIX::_exit($ok ? 0 : 1);
        }
        return;
    }) ]);
    waitpid($kid, 0) if $kid;
    my $reload_rc = $? >> 8;
    is($parked, 60, '60 requests parked (30 s timeout)');
    is($reload_rc, 0, '$n->reload: new workers up, old ones gone');
    my @late = grep { !defined $_->{done_abs} || $_->{done_abs} - $t_hup > 1 } @reqs;
    is(scalar(grep { $_->{status} == 304 } @reqs), 60, 'reload: every parked request answered 304');
    ok(!@late, 'each within 1 s of the HUP (the exit watch runs every 250 ms)')
        or diag join ' ', map { defined $_->{done_abs} ? sprintf('%.2f', $_->{done_abs} - $t_hup) : 'none' } @late;
    my $slowest = 0;
    $slowest < $_->{done_abs} - $t_hup and $slowest = $_->{done_abs} - $t_hup for grep { defined $_->{done_abs} } @reqs;
    diag sprintf 'reload: last 304 %.0f ms after the HUP', $slowest * 1000;
    ok(!grep({ OsagoTest::pid_alive($_) } @old), 'the old workers are gone');
    my @new = $n->worker_pids;
    is(scalar @new, 2, 'two new workers');
    ok(OsagoTest::wait_for(sub { OsagoTest::prom_sum(poll_metrics($n), 'osago_poll_subscribed') == 2 }, 3),
       'the new workers are subscribed');
    # the old workers, exiting after the new ones connected, left the shared slots alone
    is(OsagoTest::prom_sum(poll_metrics($n), 'osago_redis_up'), 2,
       'osago_redis_up: both new workers up (the old ones\' exit did not mark the slots down)');
    is(OsagoTest::prom_sum(poll_metrics($n), 'osago_poll_subscribed'), 2, '  and still subscribed');
    is(parked($n), 0, 'osago_poll_parked 0 after the reload');
    # and the new workers park and wake as before
    my $id = uuid4();
    put_app($r, $id, owner => 'acme', updated_at => 1000);
    my @q = ({ path => poll_path($id, latest => 1000), key => $KEY });
    my $doc = app_doc($id, updated_at => 1001);
    many(port => $n->port, requests => \@q, timeout => 5, actions => [ when_parked($n, 1, sub {
        put_app($r, $id, owner => 'acme', updated_at => 1001, doc => $doc);
        publish($r, $id, 1001);
        return;
    }) ]);
    is($q[0]{status} . ' ' . ($q[0]{content} // ''), "200 $doc", 'after the reload: parked and woken');
}

lap('reload');

# --- graceful stop (SIGQUIT) ---------------------------------------------------------------------
{
    my @reqs = map { { path => poll_path($ids[ $_ % @ids ], latest => 1000), key => $KEY } } 1 .. 60;
    my $master = $n->master_pid;
    my @kids = $n->all_children;
    my ($parked, $t_quit, $gone);
    many(port => $n->port, requests => \@reqs, timeout => 10, actions => [ when_parked($n, 60, sub {
        $parked = $_[2];
        $t_quit = time;
        kill 'QUIT', $master;
        return;
    }) ]);
    $gone = OsagoTest::wait_for(sub { !OsagoTest::pid_alive($master) }, 5) ? time - $t_quit : undef;
    is($parked, 60, '60 requests parked (30 s timeout)');
    is(scalar(grep { $_->{status} == 304 } @reqs), 60, 'SIGQUIT: every parked request answered 304');
    my @late = grep { !defined $_->{done_abs} || $_->{done_abs} - $t_quit > 1 } @reqs;
    ok(!@late, 'each within 1 s of the QUIT');
    ok(defined $gone && $gone < 2, sprintf 'nginx exited %.2f s after the QUIT (not after the 30 s'
                                   . ' poll timeout)', $gone // -1);
    ok(!grep({ OsagoTest::pid_alive($_) } @kids), 'no worker left');
    ok(!worker_crashed($n), 'no worker crashed') or diag $n->error_log;
    $n->stop;
}

lap('stop');

# --- valgrind ---------------------------------------------------------------------------------------
SKIP: {
    my $vg = `command -v valgrind 2>/dev/null`;
    chomp $vg;
    skip 'valgrind is not installed (apt-get install valgrind)', 1 unless $vg && -x $vg;
    my $dir = tempdir('osago-vg-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{OSAGO_KEEP});
    chmod 0755, $dir;
    my $wrapper = "$dir/nginx-valgrind";
    open my $fh, '>', $wrapper or die "$wrapper: $!";
    print {$fh} "#!/bin/sh\nexec $vg --tool=memcheck --leak-check=full --show-leak-kinds=definite,possible"
        . " --errors-for-leak-kinds=definite --num-callers=40 --track-fds=no --keep-debuginfo=yes"
        . " --log-file=$dir/vg.%p.log $OsagoTest::NGINX \"\$@\"\n";
    close $fh;
    chmod 0755, $wrapper;

    my $vn = do {
        local $OsagoTest::NGINX = $wrapper;
        nginx(workers => 1, timeout => '3s', class => 'ValgrindNginx');
    };
    my $vid = uuid4();
    my @vids = map { uuid4() } 1 .. 5;
    put_app($r, $_, owner => 'acme', updated_at => 1000) for $vid, @vids;
    lap('valgrind: start');
    my $res = poll_get($vn, $vid, key => $KEY, timeout => 20);
    is($res->{status}, 200, 'under valgrind: 200 at once');
    # parked and woken, parked and timed out, parked and closed (FIN, RST), closed in the first read
    my @reqs = ((map { { path => poll_path($vids[ $_ % 5 ], latest => 1000), key => $KEY, tag => 'wake' } } 1 .. 10),
                (map { { path => poll_path($vid, latest => 1000), key => $KEY, tag => 'timeout' } } 1 .. 3),
                (map { { path => poll_path($vids[0], latest => 9999), key => $KEY, tag => 'close',
                         rst => $_ % 2 } } 1 .. 6));
    my $vparked;
    many(port => $vn->port, requests => \@reqs, timeout => 20, actions => [ when_parked($vn, 19, sub {
        $vparked = $_[2];
        $_->{close_at} = 0 for grep { $_->{tag} eq 'close' } @reqs;
        for my $id (@vids) {
            put_app($r, $id, owner => 'acme', updated_at => 2000);
            publish($r, $id, 2000);
        }
        return;
    }) ]);
    is($vparked, 19, 'under valgrind: 19 parked');
    is(scalar(grep { $_->{tag} eq 'wake' && $_->{status} == 200 } @reqs), 10, 'under valgrind: woken (200)');
    is(scalar(grep { $_->{tag} eq 'timeout' && $_->{status} == 304 } @reqs), 3, 'under valgrind: timed out (304)');
    is(scalar(grep { $_->{tag} eq 'close' && defined $_->{aborted} } @reqs), 6, 'under valgrind: closed while parked');
    lap('valgrind: wake, timeout, close');
    my $vbig = uuid4();
    put_app($r, $vbig, owner => 'acme', updated_at => 1000,
            doc => app_doc($vbig, updated_at => 1000, tail => ',"pad":"' . ('x' x (2 << 20)) . '"'));
    my ($st) = closed_in_first_read($vn, $vbig, 6);
    cmp_ok($st->{parked_at_close}, '<', 6, "under valgrind: closed in the first read"
           . " ($st->{parked_at_close} of 6 parked at the close)");
    is($st->{parked_after}, 0, 'under valgrind: osago_poll_parked 0 afterwards');
    lap('valgrind: closed in the first read');
    for my $p ("/osago/application/abc", "/osago/application/$vid?latest=x") {
        is(poll_get($vn, undef, key => $KEY, path => $p, timeout => 20)->{status}, 400, "under valgrind: 400 $p");
    }
    is(poll_get($vn, uuid4(), key => $KEY, timeout => 20)->{status}, 404, 'under valgrind: 404');
    is(poll_get($vn, $vid, key => $KEY, method => 'POST', timeout => 20)->{status}, 405, 'under valgrind: 405');
    # parked across a reload and a stop
    my @q = map { { path => poll_path($vid, latest => 1000), key => $KEY } } 1 .. 3;
    my $kid;
    many(port => $vn->port, requests => \@q, timeout => 30, actions => [ when_parked($vn, 3, sub {
        $kid = fork // die "fork: $!";
        if (!$kid) { my $ok = eval { $vn->reload; 1 }; POSIX::_exit($ok ? 0 : 1) }
        return;
    }) ]);
    waitpid($kid, 0) if $kid;
    is($kid ? $? >> 8 : -1, 0, 'under valgrind: $vn->reload (a new worker up, the old one gone)');
    is(scalar(grep { $_->{status} == 304 } @q), 3, 'under valgrind: parked across a reload: 304');
    lap('valgrind: reload');
    @q = map { { path => poll_path($vid, latest => 1000), key => $KEY } } 1 .. 3;
    many(port => $vn->port, requests => \@q, timeout => 30, actions => [ when_parked($vn, 3, sub {
        kill 'QUIT', $vn->master_pid;
        return;
    }) ]);
    is(scalar(grep { $_->{status} == 304 } @q), 3, 'under valgrind: parked across a stop: 304');
    $vn->stop;
    ok(!worker_crashed($vn), 'under valgrind: no worker crashed') or diag $vn->error_log;

    lap('under valgrind');

    # the reports: one per process (the starter, the master, the workers old and new)
    my @logs = glob "$dir/vg.*.log";
    my (@lost, @possibly, @invalid, $summaries);
    for my $f (@logs) {
        my $text = OsagoTest::_slurp($f);
        $summaries++ if $text =~ /LEAK SUMMARY|All heap blocks were freed/;
        # records are separated by blank lines (each line "==pid== ...")
        my @rec = split /\n==\d+==\s*\n/, $text;
        for my $rec (@rec) {
            next unless $rec =~ /ngx_http_osago_|osago_application/;
            if ($rec =~ /definitely lost in loss record/) { push @lost, $rec }
            elsif ($rec =~ /possibly lost in loss record/) { push @possibly, $rec }
            elsif ($rec =~ /Invalid (read|write|free)|uninitialised|Conditional jump|Mismatched free/) {
                push @invalid, $rec;
            }
        }
    }
    cmp_ok(scalar @logs, '>=', 4, scalar(@logs) . ' valgrind reports (starter, master, old and new'
                                  . ' worker)');
    is($summaries // 0, scalar @logs, 'each with its leak summary (every process exited under valgrind)');
    is(scalar @lost, 0, 'no "definitely lost" block allocated in the module\'s frames')
        or diag join "\n\n", @lost[ 0 .. ($#lost > 3 ? 3 : $#lost) ];
    is(scalar @possibly, 0, 'no "possibly lost" block allocated in the module\'s frames')
        or diag join "\n\n", @possibly[ 0 .. ($#possibly > 3 ? 3 : $#possibly) ];
    is(scalar @invalid, 0, 'no invalid access in the module\'s frames')
        or diag join "\n\n", @invalid[ 0 .. ($#invalid > 3 ? 3 : $#invalid) ];
}

diag sprintf 'took %.1f s', time - $T0;
done_testing;

# Under valgrind a process's /proc/PID/cmdline is valgrind's, not the title nginx sets: the
# harness cannot tell workers by "worker process". Here every child of the master is a worker
# (there is no cache manager), and a worker that is shutting down is told by being an old one.
package ValgrindNginx;
use parent -norequire, 'OsagoTest::Nginx';

sub worker_pids {
    my ($self) = @_;
    my $m = $self->{pid} // $self->master_pid or return;
    my @w = sort { $a <=> $b } OsagoTest::Nginx::_children($m);
    return @w;    # (a count in scalar context)
}
