#!/usr/bin/perl
# A rolling deploy: worker B joins while worker A has every insurer call in flight, then A is
# stopped (SIGTERM) before its calls return. The rebalance hands A's task partitions to B (and
# some back to A), which reads the tasks again, refuses them (A runs them) and stores the
# offsets past them: no one will deliver them again. A's stop hands its calls back as pending,
# dated back so that the sweeper's next pending pass re-drives those nobody delivers; before,
# they sat pending for --redrive-after-s (10 minutes). Every application completes within
# seconds, each task at its first attempt, no insurer called more than twice for a task (A's
# abandoned call and B's).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my @SIM = qw(alfa ingos);
my @CODES = (@SIM, 'rec');
my $N = 8;
my $CALL_MS = 15000;    # long enough for B to join and read the tasks while A's calls run

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@SIM, latency => $CALL_MS);
# one more insurer, as slow, that records every call it gets
my $rec = OsagoStack::FakeInsurer->new(code => 'rec', mode => 'ok', delay_s => $CALL_MS / 1000,
                                       premium => 4321.5);
my $ins_file = $sim->write_insurers("$sim->{dir}/insurers.rs.json", add => [ $rec->entry ]);
my @common = OsagoStack::worker_flags(kafka_session_timeout_ms => 6000, sweep_interval_s => 1);
my $A = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $ins_file,
                                migrate => 1, name => 'rs-A', args => \@common);

my @ids = map { scalar OsagoStack::intake_entry($r) } 1 .. $N;
my $in = OsagoStack::_in(\@ids);
my $count = sub { scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id IN ($in)"
                                   . " AND $_[0]", quiet => 1) // 0 };
ok(OsagoStack::wait_until(sub { $count->("status = 'running'") == $N * @CODES }, 20, 0.1),
   'A runs all ' . $N * @CODES . ' tasks');
my $running_at = time;

my $B = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $ins_file,
                                name => 'rs-B', roles => 'executor,results,sweeper',
                                args => [ @common, OsagoStack::worker_flags(log_level => 'debug') ]);
my $skipped = sub {
    scalar grep { ($_->{event} // '') eq 'task_skipped' && $_->{msg} =~ /running elsewhere/ }
        @{ $B->log_lines };
};
ok(OsagoStack::wait_until(sub { $skipped->() > 0 }, 12, 0.1),
   'B joined, was given task partitions, read their tasks again and refused them (A runs them)')
    or diag substr($B->log_text, -3000);
cmp_ok(time - $running_at, '<', $CALL_MS / 1000 - 1, 'all this while A\'s calls are still out');
$A->stop;    # SIGTERM: a clean exit, no sanitizer report
my $stopped_at = time;
like($A->log_text, qr/"event":"tasks_released"/, 'A handed its unfinished calls back');

ok(OsagoStack::wait_completed($pg, \@ids, 20 + $CALL_MS / 1000),
   sprintf('every application completed (%.1f s after the stop; the calls take %.0f s)',
           time - $stopped_at, $CALL_MS / 1000))
    or diag explain [ $pg->psql("SELECT application_id, insurer_code, status, attempt,"
                                . " now() - updated_at FROM quotes WHERE status <> 'ok'") ];
is($count->("status = 'ok' AND attempt = 1"), $N * @CODES,
   'every quote ok, at its first attempt (a hand-back uses none up)');
cmp_ok(OsagoStack::metric_of($B->metrics, 'tasks_redriven') // 0, '>', 0,
       'B\'s sweeper re-drove the tasks whose offsets were stored past them');
my %calls;
$calls{ $_->{application_id} // '?' }++ for @{ $rec->calls };
is_deeply([ grep { $calls{$_} > 2 } sort keys %calls ], [],
          'the recording insurer: no task called more than twice (A\'s abandoned call, B\'s)')
    or diag explain \%calls;
is_deeply([ sort keys %calls ], [ sort @ids ], '  and every application\'s task called')
    or diag explain \%calls;

OsagoStack::check_all_done($pg, $r, \@ids, \@CODES);
$B->stop;

done_testing;
