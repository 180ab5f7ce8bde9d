#!/usr/bin/perl
# A fatal error of the idempotent producer (here: the broker refuses it a producer id with
# CLUSTER_AUTHORIZATION_FAILED, as a cluster whose ACLs lack IdempotentWrite does) leaves it
# unable to produce anything again. The worker must not run on with every batch failing while
# /healthz says fine: it logs the reason, stops and exits 1, so that its supervisor starts a
# new one. An application it had taken meanwhile is not lost: the next worker completes it.
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
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '10-20');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

like($kb->control('request error Bogus CLUSTER_AUTHORIZATION_FAILED'), qr/^error: unknown request Bogus/,
     'devbroker: an unknown request kind is refused by name');
like($kb->control('request error Produce NO_SUCH_ERROR'), qr/^error: unknown error name NO_SUCH_ERROR/,
     'devbroker: so is an unknown error');
is($kb->control('request error InitProducerId CLUSTER_AUTHORIZATION_FAILED'), 'ok',
   'devbroker: the next InitProducerId is refused (CLUSTER_AUTHORIZATION_FAILED)');

my $id = OsagoStack::intake_entry($r);
my $t0 = time;
my $w1 = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                 name => 'fatal-1', wait => 0);
my $status = $w1->wait_exit(30);
ok(defined $status, sprintf('the worker stopped by itself (%.1f s)', time - $t0));
is(defined $status ? $status >> 8 : undef, 1, '  with exit status 1, for its supervisor to restart it');
my @fatal = grep { ($_->{event} // '') eq 'kafka_fatal' } @{ $w1->log_lines };
ok(@fatal && $fatal[0]{level} eq 'error' && $fatal[0]{msg} =~ /CLUSTER_AUTHORIZATION_FAILED/
   && $fatal[0]{msg} =~ /stopping/, 'the fatal error is logged at error, with its reason')
    or diag explain [ grep { ($_->{level} // '') =~ /warn|error/ } @{ $w1->log_lines } ];
is($w1->sanitizer_report, undef, 'no sanitizer report in its log');
is(scalar $pg->psql('SELECT count(*) FROM quotes'), 0, 'no quote was made without its events');

my $w2 = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
    name => 'fatal-2', args => [ OsagoStack::worker_flags(claim_idle_ms => 1000) ]);
ok(OsagoStack::wait_completed($pg, [$id], 60),
   'a new worker completes the application the stopped one had taken');
OsagoStack::check_all_done($pg, $r, [$id], \@CODES);
is($w2->readyz, 200, 'the new worker is ready');
$w2->stop;
done_testing;
