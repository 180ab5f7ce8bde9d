#!/usr/bin/perl
# Work whose event Kafka lost (retention ran out, a broker restored from an old backup): an
# application left accepted (its Created gone) and quotes left pending (their Tasks gone). The
# rows are written straight into PostgreSQL, as such a loss would leave them. The sweeper
# re-drives them once they are older than --redrive-after-s and leaves younger ones alone; a
# re-drive Kafka does not confirm is rolled back and retried; answered quotes are kept; each
# insurer is called once per lost task; nothing lost, nothing duplicated.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $J = JSON::PP->new->utf8->canonical;
my @SIM = qw(alfa ingos reso);
my @CODES = (@SIM, 'rec');
my $REDRIVE_S = 600;          # the default: the young rows below are 540 s old

# every plan in the server log: which statements read the new partial index (below)
my $pg  = OsagoStack::Postgres->new(settings => [ '-c shared_preload_libraries=auto_explain',
                                                   '-c auto_explain.log_min_duration=0' ]);
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@SIM, latency => '20-50');
my $rec = OsagoStack::FakeInsurer->new(code => 'rec', mode => 'ok', premium => 4321.5);
my $ins_file = $sim->write_insurers("$sim->{dir}/insurers.redrive.json", add => [ $rec->entry ]);
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";
like(scalar $pg->psql("SELECT indexdef FROM pg_indexes WHERE indexname = 'applications_accepted'"),
     qr/\(created_at\) WHERE \(status = 'accepted'/,
     'migration 003: accepted applications have their own partial index, on a column that never'
     . ' changes');

# --- the stranded rows ----------------------------------------------------------------------------
my %trace;
sub app_row {
    my ($id, $status, $age_s, %o) = @_;
    my $payload = $o{raw_payload} // OsagoStack::canonical_payload(%{ $o{payload} || {} });
    $trace{$id} = $o{trace} // OsagoStack::traceparent();
    $pg->psql("INSERT INTO applications (id, partner, payload, status, trace, created_at,"
              . " updated_at) VALUES ('$id', 'acme', \$p\$$payload\$p\$, '$status',"
              . " '$trace{$id}', now() - interval '$age_s seconds',"
              . " now() - interval '$age_s seconds')");
    die $pg->last_error if $pg->last_error;
}
sub quote_row {
    my ($id, $code, $status, $attempt, $age_s, %o) = @_;
    my $premium = defined $o{premium} ? $o{premium} : 'NULL';
    my $error = defined $o{error} ? "'$o{error}'" : 'NULL';
    $pg->psql("INSERT INTO quotes (application_id, insurer_code, status, attempt, premium_rub,"
              . " error, updated_at) VALUES ('$id', '$code', '$status', $attempt, $premium,"
              . " $error, now() - interval '$age_s seconds')");
    die $pg->last_error if $pg->last_error;
}

my ($acc1, $acc2, $pend1, $pend2, $young_acc, $young_pend) = map { OsagoStack::uuid7() } 1 .. 6;
app_row($acc1, 'accepted', 3600);
app_row($acc2, 'accepted', 3600, trace => 'not-a-traceparent');
app_row($pend1, 'in_progress', 3600);
quote_row($pend1, $_, 'pending', 0, 3600) for @CODES;
app_row($pend2, 'in_progress', 3600);
quote_row($pend2, 'alfa', 'ok', 1, 3600, premium => '1234.56');
quote_row($pend2, 'ingos', 'error', 3, 3600, error => 'insurer answered 500');
quote_row($pend2, 'reso', 'pending', 0, 3600);
quote_row($pend2, 'rec', 'pending', 2, 3600);    # released by a stopping executor at attempt 2
# Deeper than an event carries (stored before the relay refused such payloads): left out of its
# page with a logged reason; the rest of the page is re-driven.
my $deep = OsagoStack::uuid7();
app_row($deep, 'accepted', 3600, raw_payload => '{"a":' x 70 . '1' . '}' x 70);
# Numbers that jsonb writes back out in full: 59 bytes stored, 655 kB read back, more than an
# event carries. The oldest row, first on its page.
my $wide = OsagoStack::uuid7();
app_row($wide, 'accepted', 7200, raw_payload => '{"x":[' . join(',', ('1e131000') x 5) . ']}');
app_row($young_acc, 'accepted', 540);
app_row($young_pend, 'in_progress', 540);
quote_row($young_pend, $_, 'pending', 0, 540) for @CODES;
my @old = ($acc1, $acc2, $pend1, $pend2);
my @young = ($young_acc, $young_pend);

my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $ins_file,
    name => 'redrive-1',
    args => [ OsagoStack::worker_flags(sweep_interval_s => 1, redrive_after_s => $REDRIVE_S) ]);
my $t_start = time;

# --- the old ones are re-driven ---------------------------------------------------------------------
ok(OsagoStack::wait_completed($pg, \@old, 30),
   sprintf('the applications older than --redrive-after-s completed (%.1f s)', time - $t_start))
    or diag explain [ $pg->psql('SELECT id, status FROM applications'),
                      $pg->psql('SELECT application_id, insurer_code, status, attempt FROM quotes') ];
sleep 3.2;    # three more sweeps: nothing more may be re-driven
my $m = $w->metrics;
is(OsagoStack::metric_of($m, 'applications_redriven'), 2,
   'applications_redriven: the two accepted applications, once each');
is(OsagoStack::metric_of($m, 'tasks_redriven'), 4 + 2,
   'tasks_redriven: the 4 pending quotes of one application and 2 of the other, once each');
is(OsagoStack::metric_of($m, 'tasks_swept'), 0, 'tasks_swept: none (nothing was running)');

my $q = OsagoStack::quotes_of($pg, \@old);
is_deeply([ @{ $q->{$pend2}{alfa} }{qw(status attempt premium)} ], [ 'ok', 1, '1234.56' ],
          'a quote answered before the loss is kept as it was');
is_deeply([ @{ $q->{$pend2}{ingos} }{qw(status attempt error)} ],
          [ 'error', 3, 'insurer answered 500' ], 'so is one that failed for good');
is_deeply([ @{ $q->{$pend2}{rec} }{qw(status attempt premium)} ], [ 'ok', 2, '4321.50' ],
          'the quote released at attempt 2 is re-driven at attempt 2 (no attempt used up)');
is($q->{$pend1}{reso}{attempt}, 1, 'a quote never claimed runs its first attempt');

my @log = @{ $w->log_lines };
my @impossible = grep { ($_->{event} // '') eq 'redrive_impossible' && $_->{msg} =~ /^\Q$deep\E/ } @log;
ok(@impossible && $impossible[0]{level} eq 'error' && $impossible[0]{msg} =~ /deeper than 64/,
   'the application whose payload no event can carry: logged at error with the reason')
    or diag explain [ grep { ($_->{level} // '') =~ /warn|error/ } @log ];
is(scalar $pg->psql("SELECT status FROM applications WHERE id = '$deep'"), 'accepted',
   '  and left accepted, the rest of its page re-driven');
my @wide = grep { ($_->{event} // '') eq 'redrive_impossible' && $_->{msg} =~ /^\Q$wide\E/ } @log;
ok(@wide && $wide[0]{msg} =~ /over 524288 bytes with its numbers written out \(655\d{3}\)/,
   'so is the one whose numbers, written out, are over 512 KiB')
    or diag explain [ grep { ($_->{level} // '') =~ /warn|error/ } @log ];
is(scalar $pg->psql("SELECT status FROM applications WHERE id = '$wide'"), 'accepted',
   '  and left accepted');
$pg->psql("DELETE FROM applications WHERE id IN ('$deep', '$wide')");    # out of the counts below
my %redriven;
$redriven{ $_->{event} }{ ($_->{msg} =~ /^([0-9a-f-]{36}(?:\/\w+)?)/)[0] // '?' }++
    for grep { ($_->{event} // '') =~ /^(?:application|task)_redriven$/ } @log;
is_deeply($redriven{application_redriven}, { $acc1 => 1, $acc2 => 1 },
          'the log names each re-driven application once')
    or diag explain \%redriven;
is_deeply($redriven{task_redriven},
          { (map { ("$pend1/$_" => 1) } @CODES), "$pend2/reso" => 1, "$pend2/rec" => 1 },
          'and each re-driven task once');
my ($acc1_log) = grep { ($_->{event} // '') eq 'application_redriven'
                        && $_->{msg} =~ /^\Q$acc1\E/ } @log;
is($acc1_log && $acc1_log->{trace_id}, (split /-/, $trace{$acc1})[1],
   'the re-drive is logged in the application\'s trace');

# The Created events the sweeper sent: the row's partner and payload, the application's trace
# (a new one where the stored one is malformed: Kafka would refuse the whole batch every sweep).
my %created = map { $_->{event}{application_id} => $_ }
              grep { $_->{event} } @{ OsagoStack::kafka_messages($kb, 'osago.application.created') };
is_deeply([ sort keys %created ], [ sort $acc1, $acc2 ],
          'osago.application.created holds a Created for each stranded application, no other');
my $c1 = $created{$acc1}{event} || {};
is($c1->{type}, 'OsagoApplicationCreated', 'of the right type');
is($c1->{traceparent}, $trace{$acc1}, 'acc1: the application\'s own traceparent');
is($c1->{data}{partner}, 'acme', 'the partner of the row');
is_deeply($c1->{data}{payload}, OsagoStack::application($pg, $acc1)->{payload},
          'the payload of the row');
like($created{$acc2}{event}{traceparent} // '', qr/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/,
     'acc2 (malformed stored trace): a new valid traceparent');

# The recording insurer: one call per lost task, in the application's trace.
my %calls;
$calls{ $_->{application_id} // '?' }++ for @{ $rec->calls };
is_deeply(\%calls, { map { ($_ => 1) } @old },
          'the recording insurer was called exactly once for each old application, never for'
          . ' the young ones') or diag explain \%calls;
my ($call1) = grep { ($_->{application_id} // '') eq $acc1 } @{ $rec->calls };
is((split /-/, $call1->{traceparent} // '')[1], (split /-/, $trace{$acc1})[1],
   'the insurer call carries the application\'s trace id');

# --- younger than --redrive-after-s: left alone -----------------------------------------------------
is(scalar $pg->psql("SELECT status FROM applications WHERE id = '$young_acc'"), 'accepted',
   'an application accepted 540 s ago (< 600) is left alone');
is(scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id = '$young_acc'"), 0,
   'no quotes were made for it');
is(scalar $pg->psql("SELECT string_agg(DISTINCT status || '/' || attempt, ',') FROM quotes"
                    . " WHERE application_id = '$young_pend'"), 'pending/0',
   'the quotes of one pending for 540 s are left alone');

# --- Kafka down: a re-drive it does not confirm is rolled back, then done -----------------------------
is($kb->control('broker down 1'), 'ok', 'Kafka broker down');
$pg->psql("UPDATE applications SET updated_at = now() - interval '1 hour' WHERE id IN ("
          . OsagoStack::_in(\@young) . ')');
$pg->psql("UPDATE quotes SET updated_at = now() - interval '1 hour'"
          . " WHERE application_id = '$young_pend'");
ok(OsagoStack::wait_until(sub {
       grep { ($_->{event} // '') eq 'kafka_error' && ($_->{role} // '') eq 'sweeper'
              && $_->{msg} =~ /rolled back/ } @{ $w->log_lines } }, 20, 0.2),
   'the sweeper reports the re-drive it could not confirm');
is(scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id = '$young_pend'"
                    . " AND updated_at > now() - interval '10 minutes'"), 0,
   'and rolled it back: the rows keep their age, so the next sweep takes them again');
my $m_down = $w->metrics;
is(OsagoStack::metric_of($m_down, 'applications_redriven'), 2, 'nor counted as re-driven');
is($kb->control('broker up 1'), 'ok', 'Kafka broker up');
ok(OsagoStack::wait_completed($pg, [ @old, @young ], 60),
   'once Kafka is back, the now old applications are re-driven and completed')
    or diag explain [ $pg->psql('SELECT application_id, insurer_code, status, attempt FROM quotes') ];
OsagoStack::wait_until(sub {
    !grep { (OsagoStack::read_model($r, $_)->{doc}{status} // '') ne 'completed' } @old, @young },
    10, 0.1);

OsagoStack::check_all_done($pg, $r, [ @old, @young ], \@CODES);
%calls = ();
$calls{ $_->{application_id} // '?' }++ for @{ $rec->calls };
is_deeply(\%calls, { map { ($_ => 1) } @old, @young },
          'one insurer call per lost task in all (a rolled-back re-drive that Kafka delivered'
          . ' late is refused by the claim)') or diag explain \%calls;
# librdkafka may still deliver what a rolled-back sweep sent once the broker is back; a sweep
# after that finds nothing left to re-drive, one before it counts the application again.
my $m_end = $w->metrics;
my $redriven = OsagoStack::metric_of($m_end, 'applications_redriven');
ok($redriven == 2 || $redriven == 3, "applications_redriven $redriven: 2, or 3 when a sweep after"
   . ' Kafka came back re-drove the young application before its late event arrived');
is(OsagoStack::metric_of($m_end, 'insurer_calls'), 5 * @CODES + 2,
   'insurer_calls: one per lost task (all of five applications, two of the sixth), none twice');
$w->stop;    # asserts a clean exit and no sanitizer report

# applications_accepted lists every accepted application: a statement that looks up a few of
# them by id (the orchestrator's "still accepted") must not scan it instead of the primary key,
# or it reads the whole backlog of an outage for each batch. Only the sweeper may use it.
my (%readers, $orch_plan);
for my $block (split /\n(?=\S[^\n]*LOG:\s+duration: [\d.]+ ms\s+plan:)/, $pg->log) {
    my ($text) = $block =~ /Query Text: ([^\n]{1,60})/ or next;
    $orch_plan = $block if $text =~ /^WITH apps AS/ && $block =~ /Update on applications/;
    $readers{$text}++ if $block =~ /Index Scan (?:using|on) applications_accepted/;
}
ok($orch_plan, 'the orchestrator\'s statement is in the server log with its plan');
like($orch_plan // '', qr/Index Scan using applications_pkey on applications/,
     'it finds the applications to start by primary key');
is_deeply([ grep { !/^SELECT id, partner, payload::text, trace FROM applications/ } keys %readers ],
          [], 'no statement but the sweeper\'s reads applications_accepted')
    or diag explain \%readers;

done_testing;
