#!/usr/bin/perl
# A task partition that leaves an executor and comes back, past where that executor read it,
# must not have its committed offset moved back by the executor's work from before.
#
# A runs every task (slow calls). B joins: the rebalance gives B some task partitions, and B
# reads past A's tasks (refused: A runs them) and past a marker message that cannot be decoded.
# B stops, its partitions return to A at B's committed offset, and A's calls then finish. A
# used to store the offsets after its old tasks there, behind B's: the group moved back, and
# the next owner read the marker (and the tasks) again. A third executor, C, taking every
# partition once A has stopped, must read only what is new.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my @CODES = qw(alfa ingos);
my $N = 12;
my $CALL_MS = 25000;    # A's calls outlast B's whole visit (checked, not assumed)
my $TOPIC = 'osago.application.task';
my $PARTITIONS = 4;     # devbroker's default

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => $CALL_MS);
my @common = OsagoStack::worker_flags(kafka_session_timeout_ms => 6000);
my $A = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                migrate => 1, name => 'ro-A', args => \@common);
my $executor = sub {
    my ($name, @more) = @_;
    OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                            name => $name, roles => 'executor', args => [ @common, @more ]);
};

my $mk = OsagoStack::Markers->new($kb, $TOPIC, partitions => $PARTITIONS);

my @ids = map { scalar OsagoStack::intake_entry($r) } 1 .. $N;
my $in = OsagoStack::_in(\@ids);
my $running = sub { scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id IN ($in)"
                                     . " AND status = 'running'", quiet => 1) // 0 };
ok(OsagoStack::wait_until(sub { $running->() == $N * @CODES }, 20, 0.1),
   'A runs all ' . $N * @CODES . ' tasks');

my $B = $executor->('ro-B');
ok(OsagoStack::wait_until(sub { $mk->assigned($B) }, 15, 0.1),
   'B joined and was given task partitions (logged: partitions_assigned)')
    or diag substr($B->log_text, -3000);
$mk->produce('first');
my @first;
ok(OsagoStack::wait_until(sub { (@first = ($mk->read_by($A), $mk->read_by($B))) == $PARTITIONS },
                          15, 0.1),
   'A and B read every partition up to its marker (one event_invalid each)')
    or diag explain \@first;
cmp_ok(scalar $mk->read_by($B), '>', 0, '  B read some of them');
sleep 1.5;    # B's stored offsets reach the group (auto-commit, every second)
my $a_assigned = () = $mk->assigned($A);
$B->stop;
ok(OsagoStack::wait_until(sub { $mk->assigned($A) > $a_assigned }, 15, 0.1),
   'B stopped; A was given the partitions again');
is($running->(), $N * @CODES, 'all this while A\'s calls are still out (every quote running)');

ok(OsagoStack::wait_completed($pg, \@ids, 20 + $CALL_MS / 1000),
   'every application completed once A\'s calls returned');
OsagoStack::check_all_done($pg, $r, \@ids, \@CODES);
sleep 1.5;    # whatever A stored reaches the group
$A->stop;

# at debug: a task read again is logged (task_skipped)
my $C = $executor->('ro-C', OsagoStack::worker_flags(log_level => 'debug'));
$mk->check_fresh_member($C, \@first);
unlike($C->log_text, qr/"event":"task_skipped"/,
       '  nor any task again') or diag substr($C->log_text, -2000);
$C->stop;

done_testing;
