#!/usr/bin/perl
# Produce requests the broker refuses (MSG_SIZE_TOO_LARGE: a permanent error for those events,
# not fatal for the producer; TOPIC_AUTHORIZATION_FAILED would do too, but librdkafka then takes
# the topic for gone until its next metadata refresh, 30 s here). The orchestrator produces the
# failed batch again before storing its Created offsets; the relay leaves the failed batch's
# entries pending and reads them again. Every application still completes, and in PostgreSQL
# nothing is lost and nothing duplicated. The worker keeps running.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $T0 = time;
my @CODES = qw(alfa ingos reso);
my $N = 40;
my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '10-30');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

# The relay alone first: every Created is in Kafka before the orchestrator starts, so the
# refused produce requests below are the orchestrator's (Started and tasks).
my $relay = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                    name => 'refused-relay', roles => 'relay');
my @ids = map { scalar OsagoStack::intake_entry($r) } 1 .. $N;
ok(OsagoStack::wait_until(sub { ($pg->psql("SELECT count(*) FROM applications WHERE status = 'accepted'"))[0] == $N }, 30, 0.1),
   "the relay stored all $N applications");
ok(OsagoStack::wait_until(sub { ($r->cli('XLEN', 'osago:intake') // -1) == 0 }, 30, 0.1),
   '  and acknowledged them (their Created events are confirmed)');

is($kb->control('request error Produce MSG_SIZE_TOO_LARGE 8'), 'ok',
   'devbroker: the next 8 produce requests are refused (Started and tasks, 4 partitions each)');
my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                name => 'refused-main', roles => 'orchestrator,executor,results');
ok(OsagoStack::wait_completed($pg, \@ids, 60), "all $N applications completed")
    or diag substr($w->log_text, -3000);

my @lines = @{ $w->log_lines };
my @refused = grep { ($_->{role} // '') eq 'orchestrator' && ($_->{event} // '') eq 'kafka_error'
                     && ($_->{msg} // '') =~ /not confirmed/ } @lines;
ok(@refused, 'the orchestrator saw a batch refused, and logged it') or diag explain [
    grep { ($_->{level} // '') =~ /warn|error/ } @lines ];
ok((grep { ($_->{event} // '') eq 'kafka_not_confirmed' && ($_->{msg} // '') =~ /too large/i } @lines),
   '  with Kafka\'s reason');
ok(!(grep { ($_->{event} // '') eq 'kafka_fatal' } @lines), 'no fatal error: the worker runs on');
ok($w->running, '  and is still running');

# Now the relay's turn: everything is idle, so the next produce requests are its Created events.
is($kb->control('request error Produce MSG_SIZE_TOO_LARGE 2'), 'ok',
   'devbroker: the next 2 produce requests are refused');
my @more = map { scalar OsagoStack::intake_entry($r) } 1 .. 20;
push @ids, @more;
ok(OsagoStack::wait_completed($pg, \@more, 60), '20 more applications completed')
    or diag substr($relay->log_text, -3000);
my @relay_refused = grep { ($_->{event} // '') eq 'kafka_error' && ($_->{msg} // '') =~ /not confirmed/ }
                    @{ $relay->log_lines };
ok(@relay_refused, 'the relay saw a batch refused, and logged it')
    or diag explain [ grep { ($_->{level} // '') =~ /warn|error/ } @{ $relay->log_lines } ];
is(scalar $r->cli('XLEN', 'osago:intake'), 0, 'every intake entry acknowledged in the end');
is(OsagoStack::metric_of($relay->metrics, 'intake_relayed'), scalar @ids,
   'intake_relayed counts each application once');

OsagoStack::check_all_done($pg, $r, \@ids, \@CODES);
my ($retried) = $pg->psql('SELECT count(*) FROM quotes WHERE attempt > 1');
is($retried, 0, 'no insurer call retried: a task produced twice is taken once');
my $started = $w->metrics;
# a batch is produced again whole, so a Created confirmed in a batch that partly failed is
# handled twice: the orchestrator announces it again and counts it again (nothing else moves)
ok(OsagoStack::metric_of($started, 'applications_started') >= scalar @ids,
   'applications_started counts every application');

$w->stop;
$relay->stop;
is($w->sanitizer_report, undef, 'no sanitizer report');
diag sprintf 'took %.1f s', time - $T0;
done_testing;
