#!/usr/bin/perl
# Events too large to pass on, written to Kafka by something other than the worker: a Created
# near a megabyte, whose Tasks the producer would refuse (message.max.bytes, 1,000,000 by
# default); a small Created whose numbers, written out as PostgreSQL prints them, make a payload
# of 655 kB; a Task of 600 kB. Each one produced on would fail its whole batch on every retry
# and stall its role for ever; each is refused when decoded, named in the log, and passed over.
# Applications behind them complete, with nothing lost or duplicated.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $J = JSON::PP->new->utf8->canonical;
my @CODES = qw(alfa ingos);
my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '10-20');
my $w   = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                  migrate => 1, name => 'oversized-1');

sub event_json {
    my ($type, $app, $data) = @_;
    return $J->encode({ type => $type, version => 1, event_id => OsagoStack::uuid7(),
                        application_id => $app, occurred_at => '2026-12-07T10:00:00.000Z',
                        traceparent => OsagoStack::traceparent(), data => $data });
}

sub produce {
    my ($topic, $app, $json) = @_;
    my ($code, undef, $err) = OsagoTest::kcat($kb->bootstrap, \"$json\n", '-P', '-t', $topic,
                                              '-k', $app, '-X', 'message.max.bytes=2000000');
    is($code, 0, sprintf('%d bytes produced on %s (kcat)', length $json, $topic)) or diag $err;
}

my ($big_created, $wide_created, $big_task) = map { OsagoStack::uuid7() } 1 .. 3;
# their rows, as the relay would have written them: the orchestrator starts only applications
# it finds accepted
my $wide_payload = '{"x":[' . join(',', ('1e131000') x 5) . ']}';
for ([ $big_created, "jsonb_build_object('owner', jsonb_build_object('name', repeat('x', 999800)))" ],
     [ $wide_created, "'$wide_payload'" ]) {
    $pg->psql("INSERT INTO applications (id, partner, payload, status, trace) VALUES"
              . " ('$_->[0]', 'acme', $_->[1], 'accepted', '" . OsagoStack::traceparent() . "')");
    die $pg->last_error if $pg->last_error;
}
my $created_json = event_json('OsagoApplicationCreated', $big_created,
    { partner => 'acme', payload => { owner => { name => 'x' x 999_800 } } });
produce('osago.application.created', $big_created, $created_json);
# 1e131000 is 131,001 digits once written out: five are 655 kB in 59 bytes
produce('osago.application.created', $wide_created,
        event_json('OsagoApplicationCreated', $wide_created, { partner => 'acme', payload => {} })
            =~ s/"payload":\{\}/"payload":$wide_payload/r);
produce('osago.application.task', $big_task,
        event_json('OsagoApplicationTask', $big_task,
                   { insurer => 'alfa', attempt => 1, payload => { s => 'y' x 600_000 } }));

my $t0 = time;
my @ids = map { scalar OsagoStack::intake_entry($r) } 1 .. 3;
ok(OsagoStack::wait_completed($pg, \@ids, 60),
   sprintf('the applications behind them completed (%.1f s)', time - $t0))
    or diag explain [ $pg->psql('SELECT application_id, insurer_code, status, attempt FROM quotes'),
                      grep { ($_->{level} // '') =~ /warn|error/ } @{ $w->log_lines } ];

my @invalid = grep { ($_->{event} // '') eq 'event_invalid' } @{ $w->log_lines };
my %by_role;
push @{ $by_role{ $_->{role} // '?' } }, $_->{msg} // '' for @invalid;
my $limit = qr/data\.payload must be at most 524288 bytes with its numbers written out/;
is(scalar(grep { /created.*skipped: $limit \(it is \d+\)/ } @{ $by_role{orchestrator} || [] }), 2,
   'the orchestrator refused both Created events, naming the limit')
    or diag explain \%by_role;
ok((grep { /\(it is 6550\d\d\)/ } @{ $by_role{orchestrator} || [] }),
   '  the one with wide numbers at its size written out (655 kB)');
is(scalar(grep { /skipped: $limit \(it is 6000\d\d\)/ } @{ $by_role{executor} || [] }), 1,
   'the executor refused the Task, naming the limit and its size')
    or diag explain \%by_role;
is(scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id IN"
                    . " ('$big_created', '$wide_created', '$big_task')"), 0,
   'no quote rows for any of them');
is(scalar $pg->psql("SELECT count(*) FROM applications WHERE status = 'accepted'"
                    . " AND id IN ('$big_created', '$wide_created')"), 2,
   'the two applications are left accepted (the sweeper names them: t/68)');
$pg->psql("DELETE FROM applications WHERE id IN ('$big_created', '$wide_created')");
OsagoStack::check_all_done($pg, $r, \@ids, \@CODES);
my @stuck = grep { ($_->{event} // '') =~ /^kafka_(?:produce|encode)_failed$/ } @{ $w->log_lines };
is(scalar @stuck, 0, 'no produce failed') or diag explain \@stuck;

$w->stop;
done_testing;
