#!/usr/bin/perl
# osago-worker through infrastructure outages, one at a time, with work in flight:
# the Kafka broker down for a few seconds (entries stay unacknowledged meanwhile), PostgreSQL
# restarted, the executor's PostgreSQL session hung mid-claim, Redis restarted (append-only, so
# the stream survives). /readyz is 503 while a dependency is down and 200 after; in the end
# nothing is lost and nothing duplicated.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my @STOPPED;    # PostgreSQL backends this test stopped: let go whatever happens
END { kill 'CONT', @STOPPED if @STOPPED }

my $T0 = time;
my @CODES = qw(alfa ingos reso);

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new(args => [ '--appendonly', 'yes', '--appendfsync', 'always' ]);
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '300-800');
my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                migrate => 1, name => 'infra-1');
ok(OsagoStack::wait_until(sub { $w->readyz == 200 }, 20, 0.1), '/readyz 200 at start');
my $m0 = $w->metrics;

my @all;
sub batch { my ($n) = @_; my @b = map { scalar OsagoStack::intake_entry($r) } 1 .. $n; push @all, @b; @b }
sub readyz_is {
    my ($want, $what, $timeout) = @_;
    my $t = time;
    my $ok = OsagoStack::wait_until(sub { $w->readyz == $want }, $timeout // 20, 0.1);
    ok($ok, sprintf('%s: /readyz %d (after %.1f s)', $what, $want, time - $t))
        or diag 'readyz: ' . $w->readyz . "\n" . substr($w->log_text, -2000);
    return $ok;
}
sub mid_run {
    my ($ids) = @_;
    my $in = OsagoStack::_in($ids);
    return OsagoStack::wait_until(sub {
        $pg->psql("SELECT count(*) FROM quotes WHERE status IN ('running', 'ok')"
                  . " AND application_id IN ($in)", quiet => 1) }, 20, 0.05);
}

# --- Kafka down for a few seconds -------------------------------------------------------------
{
    is($kb->control('broker down 1'), 'ok', 'Kafka: broker down');
    my $down_at = time;
    readyz_is(503, 'Kafka down');
    # one MULTI/EXEC: the relay reads the five in one batch, then waits for Kafka
    my @b = OsagoStack::intake_entries($r, 5);
    push @all, @b;
    my $in = OsagoStack::_in(\@b);
    ok(OsagoStack::wait_until(sub { OsagoStack::pending_count($r) == 5 }, 5, 0.1),
       'Kafka down: the 5 new entries are read but not acknowledged');
    sleep 1;    # more than they take to complete while Kafka is up
    is(OsagoStack::pending_count($r), 5, '  and stay so');
    is(scalar $pg->psql("SELECT count(*) FROM applications WHERE status = 'completed' AND id IN ($in)"),
       0, 'and none completes');
    OsagoTest::sleep_until($down_at + 5);
    is($kb->control('broker up 1'), 'ok', sprintf('Kafka: broker up after %.1f s', time - $down_at));
    readyz_is(200, 'Kafka back', 30);
    ok(OsagoStack::wait_completed($pg, \@b, 60), 'the applications accepted during the outage complete');
    ok(OsagoStack::wait_until(sub { OsagoStack::pending_count($r) == 0 }, 10, 0.1),
       'and their entries are acknowledged');
}

# --- PostgreSQL restarted mid-run -------------------------------------------------------------
{
    my @b = batch(5);
    ok(mid_run(\@b), 'PostgreSQL: work in flight (quotes running)');
    $pg->stop;
    my $t = time;
    readyz_is(503, 'PostgreSQL down');
    OsagoTest::sleep_until($t + 2);
    $pg->start;
    diag sprintf 'PostgreSQL was down %.1f s', time - $t;
    readyz_is(200, 'PostgreSQL back', 30);
    ok(OsagoStack::wait_completed($pg, \@b, 60), 'the applications in flight complete');
}

# --- the executor's PostgreSQL session hangs mid-claim (its backend stopped) -----------------------
# The claim is asynchronous: calls already running finish and their results are produced while
# the claim waits; after 10 s the executor gives up on that connection and claims on a new one
# (the hung backend still holds its row locks, so the tasks wait until it goes).
{
    my @a = batch(5);
    ok(OsagoStack::wait_until(sub {
        $pg->psql("SELECT count(*) FROM quotes WHERE status IN ('running', 'ok') AND application_id IN ("
                  . OsagoStack::_in(\@a) . ')', quiet => 1) == 5 * @CODES }, 20, 0.02),
       'claim hang: the first batch is claimed');
    my $backend = $pg->psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'osago-worker-executor'");
    ok($backend && kill('STOP', $backend), "claim hang: the executor's backend ($backend) stopped");
    push @STOPPED, $backend;
    my $t = time;
    my @b = batch(5);
    ok(OsagoStack::wait_completed($pg, \@a, 8),
       sprintf('claim hang: the first batch completes meanwhile (%.1f s)', time - $t));
    ok(OsagoStack::wait_until(sub {
        $pg->psql("SELECT count(*) FROM quotes WHERE status = 'pending' AND application_id IN ("
                  . OsagoStack::_in(\@b) . ')', quiet => 1) == 5 * @CODES }, 8, 0.1),
       'claim hang: the second batch is relayed and started: its quotes wait, pending');
    sleep 1;
    is(OsagoStack::completed_count($pg, \@b), 0, 'claim hang: the second batch waits for its claim');
    ok(OsagoStack::wait_until(sub { $w->log_text =~ /claim of \d+ tasks: PostgreSQL did not answer in time/ },
                              15, 0.2),
       sprintf('claim hang: the executor gives up on the session (%.1f s)', time - $t));
    kill 'CONT', $backend;
    @STOPPED = ();
    ok(OsagoStack::wait_completed($pg, \@b, 60),
       sprintf('claim hang: the second batch completes once the backend is gone (%.1f s)', time - $t));
}

# --- Redis hung: /readyz waits out its probe, /healthz and /metrics answer meanwhile ---------------
# Each /readyz spends its 1-s Redis probe; four at once must not hold back a liveness check.
{
    $r->pause;
    my $t = time;
    my @socks = map {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$w->{port}", Timeout => 2)
            or die "connect: $!";
        print {$s} "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        $s;
    } 1 .. 4;
    sleep 0.1;
    my $h = OsagoTest::http(GET => $w->url('/healthz'), timeout => 5);
    my $m = OsagoTest::http(GET => $w->url('/metrics'), timeout => 5);
    my @ready = map { local $/; my $x = <$_>; close $_; $x // '' } @socks;
    my $ready_s = time - $t;
    $r->resume;
    is($h->{status}, 200, 'Redis hung, four /readyz probing: /healthz 200');
    is($m->{status}, 200, '  and /metrics 200');
    cmp_ok($h->{elapsed}, '<', 0.25 * $ready_s,
           sprintf '  /healthz in %.2f s, not after the probes (%.2f s)', $h->{elapsed}, $ready_s);
    is(scalar(grep { m{^HTTP/1\.[01] 503} } @ready), 4, '  each /readyz 503 (Redis failed its probe)')
        or diag join "\n---\n", @ready;
}

# --- Redis restarted mid-run (append-only: the stream and the group survive) ----------------------
{
    my @b = batch(5);
    ok(mid_run(\@b), 'Redis: work in flight (quotes running)');
    $r->stop;
    my $t = time;
    readyz_is(503, 'Redis down');
    OsagoTest::sleep_until($t + 2);
    $r->start;
    diag sprintf 'Redis was down %.1f s', time - $t;
    readyz_is(200, 'Redis back', 30);
    my @after = batch(3);
    ok(OsagoStack::wait_completed($pg, [ @b, @after ], 60),
       'the applications in flight and those accepted after the restart complete');
}

OsagoStack::wait_until(sub {
    !grep { (OsagoStack::read_model($r, $_)->{doc}{status} // '') ne 'completed' } @all }, 20, 0.2);
OsagoStack::check_all_done($pg, $r, \@all, \@CODES,
                           'after all four outages: nothing lost, nothing duplicated');
my $bad = $pg->psql("SELECT count(*) FROM quotes WHERE status <> 'ok'");
is($bad, 0, 'every quote ok (the insurers never failed)');
is(OsagoStack::pending_count($r), 0, 'every intake entry acknowledged');
my $m1 = $w->metrics;
# a series missing from the last scrape is no count at all
my $d = sub { my $v = OsagoStack::metric_of($m1, $_[0]);
              defined $v ? $v - (OsagoStack::metric_of($m0, $_[0]) // 0) : undef };
is($d->('applications_completed'), scalar @all, 'metric applications_completed');
is($d->('intake_relayed'), scalar @all, 'metric intake_relayed');
for my $k (qw(redis_up kafka_up pg_up)) {
    is(OsagoStack::metric_of($m1, $k), 1, "gauge $k back to 1");
}
$w->stop;
diag sprintf 'took %.1f s', time - $T0;
done_testing;
