#!/usr/bin/perl
# An insurer that stops answering keeps each call until its timeout. With one limit of call
# slots for all insurers its calls would take them all within seconds, and every other
# insurer's calls would wait for its timeouts. --insurer-share-pct caps what one insurer holds:
# here 50 % of 8 slots. Twelve applications at once: the two insurers that answer are done
# within seconds, the silent one never has more than 4 calls out, and its calls beyond that
# fail as attempts (retried, then an error result with the reason); every application
# completes. Then the same with the share at 100 %, to show what the cap prevents.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Time::Local qw(timegm);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my @FAST = qw(alfa ingos);
my @CODES = (@FAST, 'mute');
my $N = 12;
my $MUTE_TIMEOUT_MS = 10000;

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@FAST, latency => '20-50');
my $mute = OsagoStack::FakeInsurer->new(code => 'mute', mode => 'hang');
my $ins_file = $sim->write_insurers("$sim->{dir}/insurers.share.json",
                                    add => [ $mute->entry(timeout_ms => $MUTE_TIMEOUT_MS) ]);
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

sub run_case {
    my ($pct) = @_;
    my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $ins_file,
        name => "share-$pct",
        args => [ OsagoStack::worker_flags(max_in_flight => 8, insurer_share_pct => $pct,
                                           retry_base_ms => 500, retry_max_ms => 1000) ]);
    my $fast_ok_of = sub {
        my $in = OsagoStack::_in($_[0]);
        scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id IN ($in)"
                         . " AND insurer_code <> 'mute' AND status = 'ok'", quiet => 1) // 0 };
    # one application first, so that what is timed below is not the consumer groups' joining
    my $warm = OsagoStack::intake_entry($r);
    OsagoStack::wait_until(sub { $fast_ok_of->([$warm]) == @FAST }, 30, 0.1)
        or die "the first application's quotes never came\n";    # this test fails, not the run
    my $mute_before = scalar @{ $mute->calls };
    my $t0 = time;
    my @ids = OsagoStack::intake_entries($r, $N);
    my $fast_ok = sub { $fast_ok_of->(\@ids) };
    OsagoStack::wait_until(sub { $fast_ok->() == $N * @FAST }, 3 * $MUTE_TIMEOUT_MS / 1000, 0.1);
    my $fast_s = time - $t0;
    my @mute = @{ $mute->calls }[ $mute_before .. $#{ $mute->calls } ];
    my $first = @mute ? $mute[0]{t} : $t0;
    my $in_window = grep { $_->{t} < $first + $MUTE_TIMEOUT_MS / 1000 - 0.5 } @mute;
    return { w => $w, ids => [ $warm, @ids ], fast_s => $fast_s, fast_ok => $fast_ok->(),
             mute_in_window => $in_window };
}

# --- the share at its default, 50 %: 4 of 8 slots --------------------------------------------------
my $c = run_case(50);
is($c->{fast_ok}, $N * @FAST, "$N applications at once: every quote of the two answering insurers ok");
cmp_ok($c->{fast_s}, '<', $MUTE_TIMEOUT_MS / 1000 - 2,
       sprintf('  within %.1f s, well before the silent insurer\'s %d s timeout', $c->{fast_s},
               $MUTE_TIMEOUT_MS / 1000));
ok($c->{mute_in_window} >= 1 && $c->{mute_in_window} <= 4,
   "the silent insurer: $c->{mute_in_window} more calls out before the first could time out"
   . ' (at most its share, 4, with the first application\'s)');
my $limited = OsagoStack::metric_of($c->{w}->metrics, 'insurer_calls_limited') // 0;
cmp_ok($limited, '>', 0, "insurer_calls_limited: $limited attempts not sent");
ok(OsagoStack::wait_completed($pg, $c->{ids}, 60), 'every application completed');
my $q = OsagoStack::quotes_of($pg, $c->{ids});
my @mute_q = map { $q->{$_}{mute} } @{ $c->{ids} };
is(scalar(grep { ($_->{status} // '') eq 'error' && $_->{attempt} == 3 } @mute_q), $N + 1,
   'the silent insurer\'s quotes: errors after 3 attempts');
ok((grep { ($_->{error} // '') eq 'not sent: too many calls to the insurer in flight' } @mute_q),
   '  some with the reason they were not sent (the executor\'s settings are for its log)')
    or diag explain \@mute_q;
like(join(' ', map { $_->{error} // '' } @mute_q), qr/time|Timeout/,
     '  and some timed out');
my @log = @{ $c->{w}->log_lines };
my @reports = grep { ($_->{event} // '') eq 'insurer_limited' } @log;
ok(@reports && !grep({ $_->{level} ne 'warn'
                       || $_->{msg} !~ /^mute: \d+ calls not sent in the last second, \d+ in flight/ }
                     @reports),
   'the log warns about the calls not sent, once a second for the insurer (' . scalar(@reports)
   . ' lines)') or diag explain \@reports;
# the per-call "not sent" lines are at debug, which this worker does not log: the reports' own
# times show them a second apart
my @at = map { my @t = ($_->{ts} // '') =~ /^(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+(?:\.\d+)?)Z$/;
               @t ? timegm(int $t[5], $t[4], $t[3], $t[2], $t[1] - 1, $t[0]) + $t[5] - int $t[5]
                  : undef } @reports;
my @gaps = map { $at[$_] - $at[ $_ - 1 ] } 1 .. $#at;
# (a second apart by the executor's clock; the log's time is read a moment later)
ok(!grep({ !defined } @at) && !grep({ $_ < 0.8 } @gaps),
   '  not once per call: the reports about a second apart') or diag explain [ \@at, \@gaps ];
OsagoStack::check_all_done($pg, $r, $c->{ids}, \@CODES);
$c->{w}->stop;

# --- no share (100 %): the silent insurer takes the slots ---------------------------------------
my $d = run_case(100);
cmp_ok($d->{fast_s}, '>', $MUTE_TIMEOUT_MS / 1000 - 1,
       sprintf('without a share the answering insurers\' quotes waited for the silent one\'s'
               . ' timeouts (%.1f s)', $d->{fast_s}));
cmp_ok($d->{mute_in_window}, '>', 4, "  which had $d->{mute_in_window} calls out at once");
$d->{w}->stop;

done_testing;
