#!/usr/bin/perl
# osago-worker with failing insurers: one that never answers (the insurer file's timeout_ms is
# 300), one answering 500, one answering garbage, each an error after exactly 3 attempts; a
# recording insurer answering 500 counts the attempts from the outside (and sees the backoff and
# the traceparent); the healthy insurers are ok; every application completed; nothing lost,
# nothing duplicated.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $T0 = time;
my $J = JSON::PP->new->utf8->canonical;
my $N = 4;
my @OK   = qw(alfa ingos);
my %FAIL = (hangs => 'timeout=1', e500 => 'error=1,status=500', junk => 'malformed=1');

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => [ @OK, sort keys %FAIL ], latency => '20-50',
                                      hold_ms => 5000, opts => \%FAIL);
my $rec = OsagoStack::FakeInsurer->new(code => 'rec500', mode => 'status', status => 500);
my $file = $sim->write_insurers("$sim->{dir}/insurers.faults.json",
                                timeouts => { hangs => 300 }, add => [ $rec->entry ]);
my @CODES = map { $_->{code} } @{ $J->decode(OsagoTest::_slurp($file)) };
is(scalar @CODES, 6, 'six insurers: ' . join(', ', @CODES));

my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $file,
                                migrate => 1, name => 'faults-1');
my $m0 = $w->metrics;

my (@ids, %trace);
for (1 .. $N) {
    my ($id, undef, undef, $tp) = OsagoStack::intake_entry($r);
    push @ids, $id;
    $trace{$id} = $tp;
}
ok(OsagoStack::wait_completed($pg, \@ids, 60),
   sprintf('all %d applications completed despite the failing insurers (%.1f s)', $N, time - $T0))
    or diag explain [ $pg->psql('SELECT application_id, insurer_code, status, attempt FROM quotes ORDER BY 1, 2') ];
OsagoStack::wait_until(sub {
    !grep { (OsagoStack::read_model($r, $_)->{doc}{status} // '') ne 'completed' } @ids }, 10, 0.1);

my $q = OsagoStack::quotes_of($pg, \@ids);
my %bad;
for my $id (@ids) {
    for my $c (@OK) {
        my $x = $q->{$id}{$c} || {};
        push @{ $bad{ok} }, "$id/$c: " . $J->encode($x)
            unless ($x->{status} // '') eq 'ok' && ($x->{premium} // 0) > 0 && ($x->{attempt} // 0) == 1;
    }
    for my $c (sort keys %FAIL, 'rec500') {
        my $x = $q->{$id}{$c} || {};
        push @{ $bad{$c} }, "$id/$c: " . $J->encode($x)
            unless ($x->{status} // '') eq 'error' && ($x->{attempt} // 0) == 3
                && !defined $x->{premium} && length($x->{error} // '') > 0;
    }
}
ok(!$bad{ok}, 'healthy insurers: ok, premium > 0, attempt 1') or diag join "\n", @{ $bad{ok} };
ok(!$bad{hangs}, 'the insurer that never answers (timeout_ms 300): error after exactly 3 attempts'
                 . ' (quotes.attempt = 3), with an error text') or diag join "\n", @{ $bad{hangs} };
ok(!$bad{e500}, 'the insurer answering 500: error after 3 attempts') or diag join "\n", @{ $bad{e500} };
ok(!$bad{junk}, 'the insurer answering garbage (200, unusable body): error after 3 attempts')
    or diag join "\n", @{ $bad{junk} };
ok(!$bad{rec500}, 'the recording insurer (500): error after 3 attempts') or diag join "\n", @{ $bad{rec500} };
diag "errors stored: " . join(' | ', map { "$_: " . ($q->{ $ids[0] }{$_}{error} // '') } sort keys %FAIL, 'rec500');
like($q->{ $ids[0] }{hangs}{error} // '', qr/time|timed/i, 'the timeout is named as such');
like($q->{ $ids[0] }{e500}{error} // '', qr/500/, 'the 500 is named as such');

# --- the recording insurer's view: exactly 3 calls per application, spaced by the backoff -------
my $calls = $rec->calls;
my %by;
push @{ $by{ $_->{application_id} // 'none' } }, $_ for @$calls;
is(scalar @$calls, 3 * $N, "the recording insurer got exactly 3 calls per application ("
                           . scalar(@$calls) . ')');
my (@call_bad, @gaps);
for my $id (@ids) {
    my @c = @{ $by{$id} || [] };
    push @call_bad, "$id: " . scalar(@c) . ' calls' unless @c == 3;
    my $tid = (split /-/, $trace{$id})[1];
    for my $c (@c) {
        push @call_bad, "$id: $c->{method} $c->{path}" unless $c->{method} eq 'POST';
        push @call_bad, "$id: content type " . ($c->{content_type} // 'none')
            unless ($c->{content_type} // '') =~ m{^application/json};
        push @call_bad, "$id: traceparent " . ($c->{traceparent} // 'none') . " not of trace $tid"
            unless ($c->{traceparent} // '') =~ /^00-\Q$tid\E-[0-9a-f]{16}-[0-9a-f]{2}$/;
        my $b = eval { $J->decode($c->{body}) } || {};
        push @call_bad, "$id: body lacks the application" unless ref $b->{vehicle} eq 'HASH'
            && ref $b->{owner} eq 'HASH' && ($b->{application_id} // '') eq $id;
    }
    push @gaps, [ map { $c[$_]{t} - $c[ $_ - 1 ]{t} } 1 .. $#c ];
}
ok(!@call_bad, 'each call: POST application/json with the application and its application_id,'
               . ' traceparent of the application\'s trace') or diag join "\n", @call_bad;
# default backoff (worker/config.h): 1 s before attempt 2, 2 s before attempt 3, minus up to 20 %
my @gap_bad = grep { @$_ != 2 || $_->[0] < 0.75 || $_->[0] > 3 || $_->[1] < 1.5 || $_->[1] > 5 } @gaps;
ok(!@gap_bad, 'exponential backoff between attempts (about 1 s, then 2 s): '
              . join(' ', map { sprintf '%.2f/%.2f', @$_[0, 1] } grep { @$_ == 2 } @gaps))
    or diag explain \@gaps;

# --- nothing lost, nothing duplicated ----------------------------------------------------------
OsagoStack::check_all_done($pg, $r, \@ids, \@CODES);
my @docs_bad;
for my $id (@ids) {
    for my $i (@{ OsagoStack::read_model($r, $id)->{doc}{insurers} || [] }) {
        my $fail = $FAIL{ $i->{code} } || $i->{code} eq 'rec500';
        push @docs_bad, "$id: " . $J->encode($i)
            if $fail ? !($i->{status} eq 'error' && !defined $i->{premium_rub} && length($i->{error} // ''))
                     : !($i->{status} eq 'ok' && $i->{premium_rub} > 0 && !defined $i->{error});
    }
}
ok(!@docs_bad, 'read model: failed insurers as error with its text and no premium, the others ok')
    or diag join "\n", @docs_bad;
is(OsagoStack::pending_count($r), 0, 'every intake entry acknowledged');

# --- Kafka: one final result per task, the failing ones after attempt 3 ------------------------
my $results = OsagoStack::kafka_messages($kb, 'osago.application.task-result');
my (%final, %n_res);
for my $m (@$results) {
    my $e = $m->{event} or next;
    my $k = ($e->{application_id} // '') . '/' . ($e->{data}{insurer} // '');
    $n_res{$k}++;
    $final{$k} = $e->{data};
}
my @res_bad;
for my $id (@ids) {
    for my $c (@CODES) {
        my $d = $final{"$id/$c"};
        my $want = ($FAIL{$c} || $c eq 'rec500') ? 'error' : 'ok';
        push @res_bad, "$id/$c: " . ($d ? $J->encode($d) : 'no result')
            unless $d && ($d->{status} // '') eq $want
                && ($d->{attempt} // 0) == ($want eq 'error' ? 3 : 1);
    }
}
ok(!@res_bad, 'the last task result of each task: ok at attempt 1, or error at attempt 3')
    or diag join "\n", @res_bad;

# --- metrics ------------------------------------------------------------------------------------
my $m1 = $w->metrics;
my $n_fail = $N * (keys(%FAIL) + 1);
my %want = (insurer_calls => $N * @OK + 3 * $n_fail, insurer_ok => $N * @OK,
            tasks_failed => $n_fail, tasks_retried => 2 * $n_fail,
            applications_completed => $N);
for my $k (sort keys %want) {
    my $v = OsagoStack::metric_of($m1, $k);
    ok(defined $v && $v - (OsagoStack::metric_of($m0, $k) // 0) == $want{$k}, "metric $k: +$want{$k}")
        or diag 'got ' . (defined $v ? $v - (OsagoStack::metric_of($m0, $k) // 0) : 'no such metric');
}
my $to = OsagoStack::metric_of($m1, 'insurer_timeouts');
cmp_ok(($to // 0) - (OsagoStack::metric_of($m0, 'insurer_timeouts') // 0), '>=', 3 * $N,
       'metric insurer_timeouts counts the hanging insurer\'s attempts');
my $errs = OsagoStack::metric_of($m1, 'insurer_errors');
cmp_ok(($errs // 0) - (OsagoStack::metric_of($m0, 'insurer_errors') // 0), '>=', 3 * $N * 3,
       'metric insurer_errors counts the failed attempts');
is(OsagoStack::metric_of($m1, 'calls_in_flight'), 0, 'nothing in flight at the end');

# the same attempts by insurer: each outcome under the insurer that caused it
{
    my @bad;
    for my $c (@CODES) {
        my %d = map { $_ => (OsagoStack::metric_of($m1, 'insurer_attempts', insurer => $c, outcome => $_) // -1)
                          - (OsagoStack::metric_of($m0, 'insurer_attempts', insurer => $c, outcome => $_) // 0) }
                qw(ok error timeout);
        my $good = (grep { $_ eq $c } @OK)
                       ? $d{ok} == $N && $d{error} == 0 && $d{timeout} == 0
                 : $c eq 'hangs'
                       ? $d{ok} == 0 && $d{error} == 0 && $d{timeout} == 3 * $N
                       : $d{ok} == 0 && $d{error} == 3 * $N && $d{timeout} == 0;
        push @bad, "$c: ok +$d{ok}, error +$d{error}, timeout +$d{timeout}" unless $good;
    }
    ok(!@bad, 'by insurer: ok for alfa and ingos, timeouts for hangs, errors for e500, junk and rec500')
        or diag join "\n", @bad;
}

my @retry_logs = grep { ($_->{level} // '') =~ /warn|error|info/ && ($_->{msg} // '') =~ /rec500|hangs|e500|junk/ }
                 @{ $w->log_lines };
ok(@retry_logs, 'failed attempts are logged, naming the insurer');

$w->stop;
$rec->stop;
diag sprintf 'took %.1f s', time - $T0;
done_testing;
