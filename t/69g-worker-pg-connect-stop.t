#!/usr/bin/perl
# A PostgreSQL address that takes connections and answers nothing (a host gone from the network
# behind a balancer that still accepts) must not hold a stop of a role that is connecting to it.
# Each role here has its own proxy in front of PostgreSQL, with a connect timeout of 30 s; the
# proxies hang (their connections closed, new ones held unanswered) and one application is
# walked through the roles: the relay, the orchestrator, results and the sweeper each lose
# their connection, start a new one that is never answered, and, stopped, exit within a few
# seconds. Before, each connected the blocking way and its stop waited for the connect timeout.
# What each was doing is redone by a role that reaches PostgreSQL, and the application ends
# with one quote per insurer, each insurer called once.
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
my ($proxy, $w) = OsagoStack::roles_behind_proxies($pg, \%common, 'hung', connect_timeout => 30);
my $executor = OsagoStack::Worker->new(%common, pg => $pg, name => 'direct-executor',
                                       roles => 'executor');

my $warm = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_completed($pg, [$warm], 60), 'through the proxies: an application completes');

$_->hang for values %$proxy;
my %hung_at = map { $_ => scalar @{ $w->{$_}->log_lines } } keys %$w;
my $status = sub { scalar $pg->psql("SELECT status FROM applications WHERE id = '$_[0]'") // '' };

# A role is connecting to the hung PostgreSQL once it logs (debug) that a connect it started
# after the hang has no answer.
sub connecting {
    my ($role) = @_;
    return OsagoStack::wait_logged($w->{$role}, $hung_at{$role}, 20, sub {
        ($_[0]{event} // '') eq 'pg_waiting' && ($_[0]{role} // '') eq $role
            && ($_[0]{msg} // '') =~ /^connect to /
    }) && $proxy->{$role}->held >= 1;
}

# the relay: the new application's insert finds the connection closed
my $id = OsagoStack::intake_entry($r);
ok(connecting('relay'), 'the relay is connecting to store the new application');
is($status->($id), '', '  which is not stored');
OsagoStack::stops_promptly($w->{relay}, 'the relay', 'relay', qr/connect/);
is(OsagoStack::pending_count($r), 1, '  its entry stays pending, for another relay to claim');

my $relay = OsagoStack::Worker->new(%common, pg => $pg, name => 'direct-relay', roles => 'relay',
                                    args => [ OsagoStack::worker_flags(claim_idle_ms => 500) ]);
ok(OsagoStack::wait_until(sub { $status->($id) eq 'accepted' }, 20, 0.05),
   'a relay that reaches PostgreSQL claims the entry and stores it');

# the orchestrator: its statement for the Created event finds the connection closed
ok(connecting('orchestrator'), 'the orchestrator is connecting to start it');
OsagoStack::stops_promptly($w->{orchestrator}, 'the orchestrator', 'orchestrator', qr/connect/);
is($status->($id), 'accepted', '  which it did not');

my $orch = OsagoStack::Worker->new(%common, pg => $pg, name => 'direct-orchestrator',
                                   roles => 'orchestrator');
ok(OsagoStack::wait_until(sub { $status->($id) eq 'in_progress' }, 30, 0.05),
   'an orchestrator that reaches PostgreSQL starts it (the Created event was redelivered)');

# results: the read model's select for the Started event (the insurers take 2.5 s)
ok(connecting('results'), 'results is connecting to show it started');
OsagoStack::stops_promptly($w->{results}, 'results', 'results', qr/connect/);

# the sweeper: a sweep a second, the first after the hang finding the connection closed
ok(connecting('sweeper'), 'the sweeper is connecting');
OsagoStack::stops_promptly($w->{sweeper}, 'the sweeper', 'sweeper', qr/connect/);

my $results = OsagoStack::Worker->new(%common, pg => $pg, name => 'direct-results',
                                      roles => 'results');
ok(OsagoStack::wait_completed($pg, [$id], 30), 'results that reach PostgreSQL complete it');
is(OsagoStack::metric_of($executor->metrics, 'insurer_calls'), 2 * @CODES,
   'each insurer called once per application');
OsagoStack::check_all_done($pg, $r, [ $warm, $id ], \@CODES);

$_->stop for $results, $orch, $relay, $executor;
$_->stop for values %$proxy;

done_testing;
