#!/usr/bin/perl
# A PostgreSQL that keeps its connections open and answers nothing (a hung server: the kernel
# still acknowledges, so keepalives never end the wait) must not hold a stop of any role. Each
# role here has its own proxy in front of PostgreSQL; all of them go silent, and one
# application is walked through the roles while it is: the relay's insert, the orchestrator's
# statement, the read model's select for the Started event and a sweep are each left waiting,
# and each role, stopped, exits within a few seconds (before, each waited for ever and had to
# be killed). What each was doing is redone by a role that reaches PostgreSQL, and the
# application ends with one quote per insurer, each insurer called once.
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
my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '2500-2500');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

my %common = (redis => $r, kafka => $kb, insurers => $sim);
my @fast_claim = OsagoStack::worker_flags(claim_idle_ms => 500);
my ($proxy, $w) = OsagoStack::roles_behind_proxies($pg, \%common, 'silent');
my $executor = OsagoStack::Worker->new(%common, pg => $pg, name => 'direct-executor',
                                       roles => 'executor');

my $warm = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_completed($pg, [$warm], 60), 'through the proxies: an application completes');

$_->stall for values %$proxy;
my %stalled_at = map { $_ => scalar @{ $w->{$_}->log_lines } } keys %$w;
my $status = sub { scalar $pg->psql("SELECT status FROM applications WHERE id = '$_[0]'") // '' };

# A role waits on the silent PostgreSQL once it logs that a statement got no answer (debug,
# pg_waiting) after the stall: only then is its stop the case under test.
sub waits_on_pg {
    my ($role, $log_role) = @_;
    return OsagoStack::wait_logged($w->{$role}, $stalled_at{$role}, 20, sub {
        ($_[0]{event} // '') eq 'pg_waiting' && ($_[0]{role} // '') eq $log_role
    });
}

# the relay: its insert of the new application waits
my $id = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_until(sub { (OsagoStack::pending_by_consumer($r)->{'silent-relay'} // 0) == 1 },
                          10, 0.05),
   'the relay has read the new application');
ok(waits_on_pg('relay', 'relay'), '  and waits for PostgreSQL to store it');
is($status->($id), '', '  which has not');
OsagoStack::stops_promptly($w->{relay}, 'the relay', 'relay');
is(OsagoStack::pending_count($r), 1, '  its entry stays pending, for another relay to claim');

my $relay = OsagoStack::Worker->new(%common, pg => $pg, name => 'direct-relay', roles => 'relay',
                                    args => \@fast_claim);
ok(OsagoStack::wait_until(sub { OsagoStack::pending_count($r) == 0 }, 20, 0.05),
   'a relay that reaches PostgreSQL claims the entry, stores it and produces Created');
is($status->($id), 'accepted', '  the application is accepted');

# the orchestrator: its statement for the Created event waits
ok(waits_on_pg('orchestrator', 'orchestrator'), 'the orchestrator waits for PostgreSQL to start it');
is($status->($id), 'accepted', '  which has not');
OsagoStack::stops_promptly($w->{orchestrator}, 'the orchestrator', 'orchestrator');

my $orch = OsagoStack::Worker->new(%common, pg => $pg, name => 'direct-orchestrator',
                                   roles => 'orchestrator');
ok(OsagoStack::wait_until(sub { $status->($id) eq 'in_progress' }, 30, 0.05),
   'an orchestrator that reaches PostgreSQL starts it (the Created event was redelivered)');

# results: the read model's select for the Started event waits (the insurers take 2.5 s)
ok(waits_on_pg('results', 'read_model'), 'results waits for PostgreSQL to show it started');
isnt((OsagoStack::read_model($r, $id)->{doc} || {})->{status} // '', 'in_progress',
     '  which it cannot');
OsagoStack::stops_promptly($w->{results}, 'results', 'read_model');

# the sweeper: a sweep a second, the last of them waiting since the stall
ok(waits_on_pg('sweeper', 'sweeper'), 'the sweeper waits for PostgreSQL');
OsagoStack::stops_promptly($w->{sweeper}, 'the sweeper', 'sweeper');

$_->pass for values %$proxy;
my $results = OsagoStack::Worker->new(%common, pg => $pg, name => 'direct-results',
                                      roles => 'results');
ok(OsagoStack::wait_completed($pg, [$id], 30), 'results that reach PostgreSQL complete it');
is(OsagoStack::metric_of($executor->metrics, 'insurer_calls'), 2 * @CODES,
   'each insurer called once per application');
OsagoStack::check_all_done($pg, $r, [ $warm, $id ], \@CODES);

$_->stop for $results, $orch, $relay, $executor;
$_->stop for values %$proxy;

done_testing;
