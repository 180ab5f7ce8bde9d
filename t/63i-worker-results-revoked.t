#!/usr/bin/perl
# Results that wait for Redis across polls (owed read models) keep their offsets unstored. When
# a rebalance takes their partitions away and gives them back past those offsets, storing them
# once Redis returns would move the group back: the next owner would read the results (and
# anything after them) again.
#
# A reaches Redis through a proxy that goes silent, so A owes the read models of every result.
# B joins the results group (with Redis), takes some partitions, applies what A left unstored
# (duplicates) and reads past a marker message that cannot be decoded. B stops; A gets its
# partitions back at B's offsets; the proxy passes again and A writes what it owed. A third
# member, C, taking every partition once A has stopped, must read only what is new.
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
my $N = 8;
my $TOPIC = 'osago.application.task-result';
my $PARTITIONS = 4;    # devbroker's default

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => 2000);
my $front = OsagoStack::TcpProxy->new(to => $r->port);
my @common = OsagoStack::worker_flags(kafka_session_timeout_ms => 6000);
my $A = OsagoStack::Worker->new(pg => $pg, redis => '127.0.0.1:' . $front->port, kafka => $kb,
                                insurers => $sim, migrate => 1, name => 'rv-A', args => \@common);
my $member = sub {
    my ($name, @more) = @_;
    OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim, name => $name,
                            roles => 'results', args => [ @common, @more ]);
};

my $logged = sub {
    my ($w, $event) = @_;
    return grep { ($_->{event} // '') eq $event } @{ $w->log_lines };
};
my $mk = OsagoStack::Markers->new($kb, $TOPIC, partitions => $PARTITIONS);

my @ids = map { scalar OsagoStack::intake_entry($r) } 1 .. $N;
my $in = OsagoStack::_in(\@ids);
ok(OsagoStack::wait_until(sub {
       ($pg->psql("SELECT count(*) FROM quotes WHERE application_id IN ($in) AND status = 'running'",
                  quiet => 1) // 0) == $N * @CODES }, 20, 0.1),
   'A runs every call (2 s each)');
$front->hang;
ok(OsagoStack::wait_completed($pg, \@ids, 20), 'Redis silent for A: the applications complete in'
   . ' PostgreSQL');
ok(OsagoStack::wait_until(sub { $logged->($A, 'read_model_owed') }, 10, 0.1),
   '  and A owes their read models');

my $B = $member->('rv-B');
ok(OsagoStack::wait_until(sub { $mk->assigned($B) }, 15, 0.1),
   'B joined the results group and was given partitions');
$mk->produce('first');
my @first;
ok(OsagoStack::wait_until(sub { (@first = ($mk->read_by($A), $mk->read_by($B))) == $PARTITIONS }, 15,
                          0.1),
   'A and B read every partition up to its marker') or diag explain \@first;
cmp_ok(scalar $mk->read_by($B), '>', 0, '  B read some of them');
sleep 1.5;    # B's offsets reach the group (auto-commit, every second)
my $a_assigned = () = $mk->assigned($A);
$B->stop;
ok(OsagoStack::wait_until(sub { $mk->assigned($A) > $a_assigned }, 15, 0.1),
   'B stopped; A was given the partitions again');

$front->pass;
ok(OsagoStack::wait_until(sub { $logged->($A, 'read_model_settled') }, 15, 0.1),
   'Redis back for A: it wrote the read models it owed');
OsagoStack::check_all_done($pg, $r, \@ids, \@CODES);
sleep 1.5;    # whatever A stored reaches the group
$A->stop;

my $C = $member->('rv-C');
$mk->check_fresh_member($C, \@first);
is(OsagoStack::metric_of($C->metrics, 'results_duplicate'), 0, '  nor any result again');
$C->stop;

done_testing;
