#!/usr/bin/perl
# Two tasks of one quote in one claim: a retry (attempt 2) and the attempt before it, as the
# sweeper re-drives a quote whose retry is still queued behind a lagging topic. The executor
# claims the newest attempt, once, and refuses the older; the quote ends ok at attempt 2 with one
# insurer call, whichever copy comes first. Before, the claim's UPDATE took whichever copy its
# plan met first (here, the first in the batch): with the older first, attempt 1 ran again, one
# call past the three attempts when that attempt had failed before.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;
use OsagoIntake ();

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $J = JSON::PP->new->utf8->canonical;
my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => ['alfa'], latency => '10-20');
my $w   = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                  migrate => 1, name => 'copies-1', roles => 'executor,results');

sub task_json {
    my ($app, $attempt, $trace) = @_;
    return $J->encode({ type => 'OsagoApplicationTask', version => 1,
                        event_id => OsagoStack::uuid7(), application_id => $app,
                        occurred_at => '2026-12-07T10:00:00.000Z', traceparent => $trace,
                        data => { insurer => 'alfa', attempt => $attempt,
                                  payload => $J->decode(OsagoStack::canonical_payload()) } });
}

my @apps = map { OsagoStack::uuid7() } 1 .. 3;
for my $app (@apps) {
    my $trace = OsagoStack::traceparent();
    # as the orchestrator leaves them, and the quote as the sweeper leaves a re-driven one
    $pg->psql("INSERT INTO applications (id, partner, payload, status, trace) VALUES"
              . " ('$app', 'acme', '{}', 'in_progress', '$trace')");
    $pg->psql("INSERT INTO quotes (application_id, insurer_code, status, attempt) VALUES"
              . " ('$app', 'alfa', 'pending', 1)");
}
# each quote's two copies one after the other on its partition (the key), so that the executor
# polls them together: the retry first and then the re-driven attempt, as the sweeper's comes
# later; and the other way round for the last quote. The claim must not depend on the order.
my $lines = '';
for my $i (0 .. $#apps) {
    my @order = $i == $#apps ? (1, 2) : (2, 1);
    $lines .= "$apps[$i]\t" . task_json($apps[$i], $_, OsagoStack::traceparent()) . "\n" for @order;
}
my ($code, undef, $err) = OsagoTest::kcat($kb->bootstrap, \$lines, '-P', '-t',
                                          'osago.application.task', '-K', "\t");
is($code, 0, 'six tasks produced, two per quote, keyed by the application') or diag $err;

ok(OsagoStack::wait_until(sub {
       $pg->psql("SELECT count(*) FROM quotes WHERE status = 'ok'") == @apps }, 30, 0.1),
   'every quote ends ok')
    or diag explain [ $pg->psql('SELECT application_id, status, attempt FROM quotes') ];
is_deeply([ $pg->psql("SELECT DISTINCT attempt FROM quotes") ], [ 2 ],
          '  at attempt 2, the newest of the two copies');
my @results = grep { ($_->{type} // '') eq 'OsagoApplicationTaskResult' }
              map { $_->{event} // () }
              @{ OsagoStack::kafka_messages($kb, 'osago.application.task-result') };
is(scalar @results, scalar @apps, 'one result per quote (one insurer call each)')
    or diag explain \@results;
is_deeply([ sort map { $_->{data}{attempt} } @results ], [ (2) x @apps ], '  each of attempt 2');

$w->stop;
done_testing;
