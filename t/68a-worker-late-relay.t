#!/usr/bin/perl
# A backlog relayed late: the edge kept accepting while the workers were away for longer than
# --redrive-after-s. Such an application reaches PostgreSQL with the edge's acceptance time as
# created_at, but it has only just arrived: the sweeper must not take it for one whose Created
# event was lost (t/68) and start it a second time. Only the relay and the sweeper run, so the
# application stays accepted across several sweeps; a row that really is stranded, written
# straight into PostgreSQL, shows that the sweeper is at work meanwhile.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $AWAY_S = 1200;    # twice the default --redrive-after-s (600 s)

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => [qw(alfa ingos)], latency => '10-20');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

my $stranded = OsagoStack::uuid7();
$pg->psql("INSERT INTO applications (id, partner, payload, status, created_at, updated_at)"
          . " VALUES ('$stranded', 'acme', '{}', 'accepted', now() - interval '1 hour',"
          . " now() - interval '1 hour')");
is($pg->last_error // '', '', 'a stranded accepted application, an hour old, in PostgreSQL');

my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
    name => 'late-relay', roles => 'relay,sweeper',
    args => [ OsagoStack::worker_flags(sweep_interval_s => 1) ]);

my $accepted_ms = int(time * 1000) - $AWAY_S * 1000;
my $late = OsagoStack::intake_entry($r, app_id => OsagoStack::uuid7($accepted_ms));
ok(OsagoStack::wait_until(sub {
       ($pg->psql("SELECT count(*) FROM applications WHERE id = '$late'"))[0] == 1 }, 30, 0.1),
   "the application the edge accepted $AWAY_S s ago is relayed");
my $relayed_ms = int(time * 1000);
sleep 3.5;    # three sweeps at least

my ($created_ms, $updated_ms, $status) = split /\|/, scalar $pg->psql(
    "SELECT floor(extract(epoch FROM created_at) * 1000)::bigint,"
    . " floor(extract(epoch FROM updated_at) * 1000)::bigint, status"
    . " FROM applications WHERE id = '$late'");
is($created_ms, $accepted_ms, 'its created_at is when the edge accepted it');
cmp_ok(abs(($updated_ms // 0) - $relayed_ms), '<', 5000,
       '  and its updated_at when the relay stored it');
is($status, 'accepted', '  still accepted (no orchestrator runs)');

my %created;
$created{ $_->{key} // '?' }++
    for OsagoStack::kafka_messages($kb, 'osago.application.created')->@*;
is($created{$late}, 1, 'one OsagoApplicationCreated for it: the relay\'s, none from the sweeper')
    or diag explain \%created;
is($created{$stranded}, 1, 'the stranded one was re-driven meanwhile, once');
is(OsagoStack::metric_of($w->metrics, 'applications_redriven'), 1,
   'applications_redriven: the stranded application only');
ok(!grep({ ($_->{event} // '') eq 'application_redriven' && $_->{msg} =~ /^\Q$late\E/ }
         @{ $w->log_lines }), 'no re-drive of the late application in the log');
$w->stop;    # asserts a clean exit and no sanitizer report

done_testing;
