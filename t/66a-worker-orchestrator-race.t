#!/usr/bin/perl
# Two orchestrators on one Created (a rebalance hands it to a second consumer while the first is
# still at it). Here the first is a psql session: it has made the application in_progress and
# inserted its quotes, and commits only once the worker's orchestrator waits for the row lock.
# The worker then finds nothing left to start, and its snapshot predates the other's quotes; it
# must read them again and announce the application from them (Started and Tasks), not skip it:
# had the other one stopped before Kafka confirmed its events, nobody would announce them, and
# this side has stored the offset.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Handle;
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my @CODES = qw(alfa ingos reso);
my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '10-20');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

my $relay = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                    name => 'race-relay', roles => 'relay');
my $id = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_until(sub { ($r->cli('XLEN', 'osago:intake') // -1) == 0 }, 30, 0.1),
   'the relay stored the application and its Created is in Kafka');
$relay->stop;

# the other orchestrator, mid-transaction: two of the three insurers
open(my $other, '|-', 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1',
     '-p', $pg->port, '-U', 'osago', '-d', 'osago') or die "psql: $!";
$other->autoflush(1);
print {$other} "BEGIN;\n"
    . "UPDATE applications SET status = 'in_progress' WHERE id = '$id';\n"
    . "INSERT INTO quotes (application_id, insurer_code) VALUES ('$id', 'alfa'), ('$id', 'ingos');\n";
ok(OsagoStack::wait_until(sub {
       ($pg->psql("SELECT count(*) FROM pg_locks WHERE relation = 'applications'::regclass"
                  . " AND mode = 'RowExclusiveLock' AND granted"))[0] >= 1 }, 10, 0.05),
   'the other orchestrator holds the application\'s row');

my $orch = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                   name => 'race-orch', roles => 'orchestrator');
ok(OsagoStack::wait_until(sub {
       ($pg->psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                  . " AND query LIKE 'WITH apps AS%'"))[0] >= 1 }, 30, 0.05),
   'the worker\'s orchestrator waits for that row');
print {$other} "COMMIT;\n";
close $other;
is($? >> 8, 0, 'the other orchestrator committed');

my %ev;
ok(OsagoStack::wait_until(sub {
       %ev = ();
       for my $topic (qw(osago.application.started osago.application.task)) {
           push @{ $ev{$topic} }, grep { ($_->{key} // '') eq $id }
               @{ OsagoStack::kafka_messages($kb, $topic, timeout => 10) };
       }
       @{ $ev{'osago.application.started'} || [] } && @{ $ev{'osago.application.task'} || [] } >= 2
   }, 30, 0.5), 'the worker announced the application all the same');
my @started = @{ $ev{'osago.application.started'} || [] };
is(scalar @started, 1, 'one Started');
is_deeply([ sort @{ $started[0]{event}{data}{insurers} || [] } ], [qw(alfa ingos)],
          '  listing the insurers the other orchestrator started it with, not the file\'s three')
    or diag explain \@started;
is_deeply([ sort map { $_->{event}{data}{insurer} // '?' } @{ $ev{'osago.application.task'} } ],
          [qw(alfa ingos)], 'a Task for each of them') or diag explain $ev{'osago.application.task'};
is(scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id = '$id'"), 2,
   'no quote rows of its own');
my @log = @{ $orch->log_lines };
ok((grep { ($_->{event} // '') eq 'application_raced' && $_->{msg} =~ /^\Q$id\E/ } @log),
   'the log says it was started by another orchestrator meanwhile')
    or diag explain [ grep { ($_->{level} // '') ne 'debug' } @log ];
ok(!(grep { ($_->{event} // '') eq 'application_skipped' } @log), 'and nothing was skipped');
$orch->stop;

done_testing;
